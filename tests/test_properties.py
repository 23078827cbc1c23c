"""Property-based tests (Hypothesis): what must hold for any input, not just the ones someone thought of."""

import functools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2kit.data.tokens import TokenWriter, read_tokens
from gpt2kit.pipeline import process_logits
from gpt2kit.sampling import NonFiniteLogits, SamplingSettings, draw, draw_top_k, make_generator
from gpt2kit.tokenizer import gpt2_tokenizer

TOK = gpt2_tokenizer()
quick = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@quick
@given(st.text())
def test_the_tokenizer_round_trips_any_text(text):
    assert TOK.decode(TOK.encode_ordinary(text)) == text


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_the_tokenizer_gives_transformers_ids(text):
    ref = _hf_tokenizer()
    assert TOK.encode_ordinary(text) == ref(text)["input_ids"]


@functools.cache
def _hf_tokenizer():
    import shutil
    import tempfile
    from pathlib import Path

    from transformers import GPT2TokenizerFast

    from gpt2kit.paths import ASSETS_DIR

    d = Path(tempfile.mkdtemp())  # the fast tokenizer loads from a folder of Hugging Face names
    shutil.copy(ASSETS_DIR / "encoder.json", d / "vocab.json")
    shutil.copy(ASSETS_DIR / "vocab.bpe", d / "merges.txt")
    return GPT2TokenizerFast.from_pretrained(str(d))


@quick
@given(st.lists(st.integers(0, 50256), max_size=3000), st.integers(1, 5))
def test_any_token_sequence_survives_the_dataset_format(tmp_path_factory, tokens, pieces):
    path = tmp_path_factory.mktemp("tokens") / "data.tokens"
    w = TokenWriter(path, 50257)
    for chunk in np.array_split(np.asarray(tokens, dtype=np.int64), pieces):
        w.write(chunk)
    if not tokens:
        w.abort()
        return
    w.close()
    assert read_tokens(path).tolist() == tokens


logits_rows = st.integers(1, 3).flatmap(
    lambda b: st.integers(2, 40).flatmap(
        lambda v: st.lists(
            st.lists(st.floats(-30, 30, allow_nan=False), min_size=v, max_size=v), min_size=b, max_size=b
        )
    )
)
sampling_settings = st.builds(
    SamplingSettings, temperature=st.floats(0.05, 3), top_k=st.integers(0, 50), top_p=st.floats(0.01, 1.0)
)


@quick
@given(logits_rows, sampling_settings, st.integers(0, 2**31))
def test_filters_keep_what_they_promise_and_stay_normalised(rows, s, seed):
    logits = torch.tensor(rows)
    out = process_logits(logits, s, [])
    probs = out.softmax(-1)
    assert torch.allclose(probs.sum(-1), torch.ones(len(rows)), atol=1e-5)
    kept = torch.isfinite(out)
    top = logits == logits.max(-1, keepdim=True).values
    assert (kept & top).any(-1).all()  # a most likely token always stays (of tied ones, any)
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[1]), dim=-1).values[:, -1:]
        assert (kept.sum(-1) <= (logits >= kth).sum(-1)).all()  # the k largest, and ties with the k-th
    if s.top_p < 1:  # what top-p keeps reaches p under the distribution before it
        before = process_logits(logits, SamplingSettings(temperature=s.temperature, top_k=s.top_k), []).softmax(-1)
        assert ((before * kept).sum(-1) >= s.top_p - 1e-5).all()
    gens = [make_generator(seed + i) for i in range(len(rows))]
    tokens = draw(out, s.temperature, gens)
    assert kept.gather(-1, tokens.unsqueeze(-1)).all()  # never a filtered-out token
    if s.top_k:  # the fast path draws the same tokens from the same seeds
        fast = draw_top_k(logits, s, [make_generator(seed + i) for i in range(len(rows))])
        assert torch.equal(fast, tokens)


@quick
@given(logits_rows, st.sampled_from([float("nan"), float("inf"), "all-inf"]), st.data())
def test_rows_with_nan_or_inf_are_refused_never_sampled(rows, bad, data):
    logits = torch.tensor(rows)
    row = data.draw(st.integers(0, len(rows) - 1))
    if bad == "all-inf":
        logits[row] = float("-inf")
    else:
        logits[row, data.draw(st.integers(0, logits.shape[1] - 1))] = bad
    for temperature in (0.0, 1.0):
        with pytest.raises(NonFiniteLogits, match=f"row {row}"):
            draw(logits, temperature, [make_generator(i) for i in range(len(rows))])
