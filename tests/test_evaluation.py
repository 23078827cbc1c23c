"""Perplexity: the library function against transformers, and the CLI as a thin adapter over it."""

import shutil

import pytest
import torch
from conftest import FIXTURES, run_cli

import gpt2kit

TEXT = FIXTURES / "heldout_phoenix_and_the_turtle.txt"


def reference_loss(hf_folder, ids: list[int], window: int) -> float:
    """transformers' own GPT-2 over the same non-overlapping windows: every token scored once."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, window):
            chunk = torch.tensor(ids[s : s + window + 1])
            logits = model(chunk[:-1].unsqueeze(0)).logits[0]
            total += torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum").item()
            count += len(chunk) - 1
    return total / count


def test_perplexity_matches_transformers_on_text_and_on_its_token_dataset(lm_tiny, hf_tiny, tmp_path):
    ids = lm_tiny.tokenizer.encode(TEXT.read_text()) + [lm_tiny.tokenizer.eot_id]  # one document
    r = gpt2kit.perplexity(lm_tiny, TEXT, context_length=16)
    assert r.tokens == len(ids)
    assert r.loss == pytest.approx(reference_loss(hf_tiny, ids, 16), rel=1e-4)
    assert r.perplexity == pytest.approx(torch.tensor(r.loss).exp().item(), rel=1e-6)
    gpt2kit.encode_dataset([TEXT], tmp_path / "t.tokens", progress=False)
    assert gpt2kit.perplexity(lm_tiny, tmp_path / "t.tokens", context_length=16).loss == pytest.approx(r.loss, rel=1e-6)


def test_perplexity_bad_input_is_a_user_error(lm_tiny):
    with pytest.raises(gpt2kit.UserError, match="does not exist"):
        gpt2kit.perplexity(lm_tiny, "/no/such/file")
    with pytest.raises(gpt2kit.UserError, match="context_length"):
        gpt2kit.perplexity(lm_tiny, TEXT, context_length=-1)


def test_perplexity_cli_finds_the_model_in_models_dir(lm_tiny, hf_tiny, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(hf_tiny, models / "mine")
    r = run_cli(
        "perplexity",
        TEXT,
        "--models-dir",
        models,
        "--model",
        "mine",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        cwd=tmp_path,
    )  # `mine` is nowhere but in the models folder
    assert r.returncode == 0, r.stderr
    expected = gpt2kit.perplexity(lm_tiny, TEXT)
    assert (
        r.stdout == f"{TEXT}: {expected.tokens:,} tokens, loss {expected.loss:.4f} nats/token, "
        f"perplexity {expected.perplexity:.2f}\n"
    )
