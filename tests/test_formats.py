"""Every on-disk format against an independent reference: TensorFlow for OpenAI/gpt-2-simple/nshepperd
checkpoints (fixtures written by real TensorFlow, scripts/make_tf_fixtures.py), transformers for HF."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import FIXTURES

import gpt2kit
from gpt2kit.errors import UserError

TF_CASES = [
    ("openai_tiny", None, "logits", "greedy"),
    ("gpt2_simple_run/run1", None, "logits", "greedy"),  # `checkpoint` names the newest: model-20
    ("gpt2_simple_run/run1", "model-10", "logits_10", "greedy_10"),
    ("nshepperd_run/run1", None, "logits", "greedy"),  # no hparams.json: sizes inferred
]


@pytest.mark.parametrize("folder,checkpoint,logits_key,greedy_key", TF_CASES)
def test_tf_checkpoints_match_tensorflow(folder, checkpoint, logits_key, greedy_key):
    path = FIXTURES / folder
    expected = np.load(path / "expected.npz")
    lm = gpt2kit.load(path, device="cpu", dtype="float32", checkpoint=checkpoint)
    ids = expected["ids"].astype(np.int64)
    with torch.no_grad():
        logits = lm.model(torch.from_numpy(ids)[None])[0].numpy()
    assert np.abs(logits - expected[logits_key]).max() < 1e-4
    prompt = lm.tokenizer.decode(ids.tolist())
    assert lm.tokenizer.encode(prompt) == ids.tolist()  # the folder's own (tiny) vocabulary is used
    sample = [s for s in lm.samples(prompt, length=8, temperature=0, stop_at_eot=False) if hasattr(s, "tokens")][0]
    assert sample.tokens == expected[greedy_key].tolist()


def test_nshepperd_sizes_are_inferred_and_said():
    lm = gpt2kit.load(FIXTURES / "nshepperd_run/run1", device="cpu")
    assert lm.config.n_head == 1 and lm.config.n_embd == 64
    assert any("inferred" in n for n in lm.info["notes"])


def test_hf_logits_and_greedy_match_transformers(hf_tiny, lm_tiny):
    from transformers import GPT2LMHeadModel

    ref = GPT2LMHeadModel.from_pretrained(hf_tiny).eval()
    idx = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ref(idx).logits - lm_tiny.model(idx)).abs().max() < 1e-4
    prompt = "The meaning of life is"
    ids = torch.tensor([lm_tiny.tokenizer.encode(prompt)])
    out = ref.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=50256)[0, ids.size(1) :].tolist()
    sample = [s for s in lm_tiny.samples(prompt, length=20, temperature=0, stop_at_eot=False) if hasattr(s, "tokens")][
        0
    ]
    assert sample.tokens == out


@pytest.mark.parametrize(
    "key,value",
    [("activation_function", "relu"), ("scale_attn_by_inverse_layer_idx", True), ("tie_word_embeddings", False)],
)
def test_a_local_gpt2_variant_is_refused_not_misread(hf_tiny, tmp_path, key, value):
    """A folder whose config.json asks transformers for a computation gpt2kit's model does not do loads as a
    clear refusal, not as a model with silently different outputs. transformers says the outputs do differ."""
    from transformers import GPT2LMHeadModel

    folder = tmp_path / "variant"
    shutil.copytree(hf_tiny, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    if key != "tie_word_embeddings":  # untied, the saved file has no separate lm_head to compare with
        idx = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            plain = GPT2LMHeadModel.from_pretrained(hf_tiny).eval()(idx).logits
            variant = GPT2LMHeadModel.from_pretrained(folder).eval()(idx).logits
        assert (plain - variant).abs().max() > 1e-4  # beyond the 1e-4 of the parity tests above
    with pytest.raises(UserError, match=f"{key}.*variant"):
        gpt2kit.load(folder, device="cpu")


@pytest.mark.parametrize("variant", ["sharded", "bin"])
def test_hf_sharded_and_bin(hf_tiny, lm_tiny, tmp_path, variant):
    from transformers import GPT2LMHeadModel

    ref = GPT2LMHeadModel.from_pretrained(hf_tiny)
    if variant == "sharded":
        ref.save_pretrained(tmp_path / "m", max_shard_size="500KB")
        assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    else:
        (tmp_path / "m").mkdir()
        ref.config.save_pretrained(tmp_path / "m")
        torch.save(ref.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    lm = gpt2kit.load(tmp_path / "m", device="cpu", dtype="float32")
    idx = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        assert (lm.model(idx) - lm_tiny.model(idx)).abs().max() < 1e-5


def test_convert_tf_to_hf_opens_in_transformers(tmp_path):
    from transformers import GPT2LMHeadModel

    out = gpt2kit.convert(FIXTURES / "openai_tiny", tmp_path / "hf")
    expected = np.load(FIXTURES / "openai_tiny" / "expected.npz")
    ref = GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        logits = ref(torch.from_numpy(expected["ids"].astype(np.int64))[None]).logits[0].numpy()
    assert np.abs(logits - expected["logits"]).max() < 1e-4
    for f in ("vocab.json", "merges.txt", "encoder.json", "vocab.bpe"):
        assert (out / f).is_file()
    with pytest.raises(UserError, match="not empty"):
        gpt2kit.convert(FIXTURES / "openai_tiny", tmp_path / "hf")


def test_truncated_tf_data_file_is_named(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "openai_tiny", folder)
    data = folder / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(UserError, match="model.ckpt.data-00000-of-00001 is truncated"):
        gpt2kit.load(folder, device="cpu")


def test_corrupted_index_and_safetensors(tmp_path, hf_tiny):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "openai_tiny", folder)
    (folder / "model.ckpt.index").write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="model.ckpt.index"):
        gpt2kit.load(folder, device="cpu")
    hf = tmp_path / "hf"
    shutil.copytree(hf_tiny, hf)
    st = hf / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(UserError, match="model.safetensors is truncated or corrupted"):
        gpt2kit.load(hf, device="cpu")


def test_hparams_that_do_not_match(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "openai_tiny", folder)
    hp = json.loads((folder / "hparams.json").read_text())
    hp["n_layer"] = 5
    (folder / "hparams.json").write_text(json.dumps(hp))
    with pytest.raises(UserError, match="n_layer=5 but the tensors say 2"):
        gpt2kit.load(folder, device="cpu")


def test_missing_and_unrecognised_folders(tmp_path):
    with pytest.raises(UserError, match="no model folder"):
        gpt2kit.load(tmp_path / "nope", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no GPT-2 checkpoint"):
        gpt2kit.load(tmp_path / "empty", device="cpu")
    with pytest.raises(UserError, match="no checkpoint 'model-99'"):
        gpt2kit.load(FIXTURES / "gpt2_simple_run/run1", device="cpu", checkpoint="model-99")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_hf_checkpoints_load_as_transformers_widens_them(hf_tiny, tmp_path, dtype):
    from transformers import GPT2LMHeadModel

    ref = GPT2LMHeadModel.from_pretrained(hf_tiny, torch_dtype=getattr(torch, dtype))
    ref.save_pretrained(tmp_path / "m")  # stored in fp16 / bf16, Conv1D weights (in, out)
    ref = ref.float().eval()
    lm = gpt2kit.load(tmp_path / "m", device="cpu", dtype="float32")
    idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (ref(idx).logits - lm.model(idx)).abs().max() < 1e-4


def test_a_model_is_built_without_drawing_random_numbers(hf_tiny):
    """A checkpoint or init_weights sets every weight, so PyTorch's own random init is never run."""
    from gpt2kit.config import GPTConfig
    from gpt2kit.formats import build_model, read_checkpoint
    from gpt2kit.model import GPT

    ck = read_checkpoint(hf_tiny)
    state = torch.random.get_rng_state()
    GPT(GPTConfig(n_vocab=97, n_ctx=16, n_embd=32, n_layer=2, n_head=4))
    model = build_model(ck.config, ck.state_dict, ck.path)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(model.h[0].attn.c_attn.weight, read_checkpoint(hf_tiny).state_dict["h.0.attn.c_attn.weight"])


def test_a_vocabulary_that_is_not_byte_level_bpe_is_named(hf_tiny, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(hf_tiny, folder)
    (folder / "encoder.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "\u4e2d": 3, "<|endoftext|>": 4}))
    (folder / "vocab.bpe").write_text("#version: 0.2\na b\n")
    with pytest.raises(UserError, match="has token '\u4e2d', which is not byte-level BPE"):
        gpt2kit.load(folder, device="cpu")
