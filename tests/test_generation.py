"""Generation: batching, seeds, stop strings, post-processing, sampling filters, bad parameters."""

import pytest
import torch

from gpt2kit.errors import UserError
from gpt2kit.generation import Sample
from gpt2kit.pipeline import process_logits
from gpt2kit.sampling import (
    SamplingSettings,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    draw,
    draw_top_k,
    make_generator,
)


def finished(events):
    return [e for e in events if isinstance(e, Sample)]


def test_batched_prompts_of_different_lengths_match_running_alone(lm_tiny):
    prompts = ["Hi", "A much longer prompt, with several more tokens in it", "Medium length prompt"]
    together = lm_tiny.generate(prompts, length=12, temperature=0, batch_size=3, stop_at_eot=False)
    alone = [lm_tiny.generate(p, length=12, temperature=0, stop_at_eot=False)[0] for p in prompts]
    assert together == alone
    # the logits of a left-padded row equal the unpadded row's
    s_batch = finished(lm_tiny.samples(prompts, length=5, temperature=0, batch_size=3, stop_at_eot=False, logprobs=3))
    s_alone = finished(lm_tiny.samples(prompts[0], length=5, temperature=0, stop_at_eot=False, logprobs=3))
    assert abs(s_batch[0].steps[0].logprob - s_alone[0].steps[0].logprob) < 1e-4


def test_same_seed_same_text_whatever_the_batch_size(lm_tiny):
    a = lm_tiny.generate("Once upon a time", length=15, seed=7, nsamples=4, batch_size=1, top_k=40)
    b = lm_tiny.generate("Once upon a time", length=15, seed=7, nsamples=4, batch_size=4, top_k=40)
    c = lm_tiny.generate("Once upon a time", length=15, seed=8, nsamples=4, batch_size=4, top_k=40)
    assert a == b
    assert a != c
    assert len(set(a)) > 1  # the samples of one run differ from each other


def test_output_order_is_prompt_order(lm_tiny):
    out = lm_tiny.generate(["First", "Second"], length=3, seed=1, nsamples=2, batch_size=3)
    assert [o.startswith("First") for o in out] == [True, True, False, False]
    assert all(o.startswith("Second") for o in out[2:])


def test_include_prefix_and_stream(lm_tiny):
    with_prefix = lm_tiny.generate("Hello", length=8, seed=3)[0]
    without = lm_tiny.generate("Hello", length=8, seed=3, include_prefix=False)[0]
    assert with_prefix == "Hello" + without
    assert "".join(lm_tiny.stream("Hello", length=8, seed=3)) == without


def test_stop_strings_cut_and_stop(lm_tiny):
    full = lm_tiny.generate("Hello", length=40, temperature=0, stop_at_eot=False, include_prefix=False)[0]
    words = full.split(" ")
    stop = " " + words[3]
    cut = lm_tiny.generate("Hello", length=40, temperature=0, stop_at_eot=False, include_prefix=False, stop=stop)[0]
    assert cut == full[: full.index(stop)]
    # streaming never shows any part of the stop string
    streamed = "".join(lm_tiny.stream("Hello", length=40, temperature=0, stop_at_eot=False, stop=[stop]))
    assert streamed == cut
    # truncate (gpt-2-simple) cuts the same way, also without include_prefix (gpt-2-simple bug #153)
    trunc = lm_tiny.generate("Hello", length=40, temperature=0, stop_at_eot=False, include_prefix=False, truncate=stop)[
        0
    ]
    assert trunc == cut


def test_sliding_window_beyond_context(lm_tiny):
    n_ctx = lm_tiny.config.n_ctx  # 64
    s = finished(lm_tiny.samples("Hello", length=3 * n_ctx, seed=1, stop_at_eot=False))[0]
    assert len(s.tokens) == 3 * n_ctx
    # without --length, generation ends when the context is full
    s = finished(lm_tiny.samples("Hello", seed=1, stop_at_eot=False))[0]
    assert len(s.tokens) + s.prompt_tokens == n_ctx


def test_unconditional_starts_from_endoftext(lm_tiny):
    s = finished(lm_tiny.samples(None, length=5, seed=2, stop_at_eot=False))[0]
    assert s.prompt == "" and s.prompt_tokens == 1 and len(s.tokens) == 5


def test_long_prompt_keeps_its_end(lm_tiny, caplog):
    long = " word" * 200
    s = finished(lm_tiny.samples(long, length=2, seed=1, stop_at_eot=False))[0]
    assert s.prompt_tokens == lm_tiny.config.n_ctx - 1
    assert "keeping its last" in caplog.text


def test_top_k_and_top_p_against_definitions():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0]])
    assert torch.isfinite(apply_top_k(logits, 2)).tolist() == [[True, False, True, False, False]]
    probs = logits.softmax(-1)[0]  # 0.665, 0.090, 0.245, 0.033, 0.012
    kept = torch.isfinite(apply_top_p(logits, 0.8))[0].tolist()
    assert kept == [True, False, True, False, False]  # 0.665 < 0.8 <= 0.665 + 0.245
    assert torch.isfinite(apply_top_p(logits, 0.5))[0].tolist() == [True, False, False, False, False]
    assert float(probs[0]) > 0.5


def test_repetition_penalty_is_ctrl():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]


@pytest.mark.parametrize(
    "settings",
    [SamplingSettings(top_k=40), SamplingSettings(top_k=7, top_p=0.9, temperature=0.7), SamplingSettings(top_k=1)],
)
def test_top_k_fast_path_draws_what_the_full_definition_draws(settings):
    """draw_top_k (the decoder's shortcut) picks the token draw(process_logits(...)) picks, seed for seed."""
    logits = torch.randn(6, 50257, generator=torch.Generator().manual_seed(0)) * 3
    for seed in range(50):
        full = draw(
            process_logits(logits, settings, []), settings.temperature, [make_generator(seed * 6 + i) for i in range(6)]
        )
        fast = draw_top_k(logits, settings, [make_generator(seed * 6 + i) for i in range(6)])
        assert fast.tolist() == full.tolist()


def test_draw_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).repeat(4000, 1)
    gens = [make_generator(i) for i in range(4000)]
    counts = torch.bincount(draw(logits, 1.0, gens), minlength=3).float() / 4000
    assert torch.allclose(counts, torch.tensor([0.2, 0.5, 0.3]), atol=0.03)


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-1),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(length=-3),
        dict(batch_size=0),
        dict(nsamples=0),
    ],
)
def test_bad_parameters_are_user_errors(lm_tiny, bad):
    with pytest.raises(UserError):
        lm_tiny.generate("Hi", **bad)


def test_int8_weights_stay_close_to_float32():
    from conftest import FIXTURES

    import gpt2kit

    a = gpt2kit.load(FIXTURES / "openai_tiny", device="cpu")
    b = gpt2kit.load(FIXTURES / "openai_tiny", device="cpu", dtype="int8")
    assert b.info["dtype"] == "int8"
    idx = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, y = a.model(idx), b.model(idx)
    assert (x.argmax(-1) == y.argmax(-1)).float().mean() > 0.9
    assert (x - y).abs().max() < 0.05 * x.abs().max()
    assert b.generate("Hello", length=5, seed=1)  # and it generates
