"""The one engine: the same seed gives the same text through every front end, alone or in a mixed batch, and
the engine's rows compute what the static-batch loop it replaced computed (kept in tests as an oracle)."""

import json
import threading
import urllib.request

import pytest
import torch
from conftest import run_cli
from live_server import start_server
from oracle_decoding import BatchDecoder

import gpt2kit
from gpt2kit.batching import Prefill, prefill_together
from gpt2kit.engine import Engine
from gpt2kit.generation import make_sequences
from gpt2kit.sampling import SamplingSettings, make_generator
from gpt2kit.sequence import DONE, Request, Status

PROMPT, SEED, LENGTH = "The engine", 11, 24
SETTINGS = dict(temperature=0.9, top_k=40, top_p=0.95)
OTHERS = [  # what shares the batch: every other kind of row
    {"prompt": "Greedy neighbour", "max_tokens": 30, "temperature": 0},
    {"prompt": "Penalised", "max_tokens": 28, "seed": 2, "repetition_penalty": 1.3, "frequency_penalty": 0.5},
    {"prompt": "Nucleus only", "max_tokens": 20, "seed": 3, "top_p": 0.8},
    {"prompt": "Biased", "max_tokens": 26, "seed": 4, "logit_bias": {"11": 5}},
    {"prompt": [464, 3290, 318], "max_tokens": 22, "seed": 5, "temperature": 1.3},
    {"prompt": "Several samples", "max_tokens": 18, "seed": 6, "n": 2},
    {"prompt": "Short", "max_tokens": 3, "seed": 7},
    {"prompt": "With logprobs", "max_tokens": 25, "seed": 8, "logprobs": 3},
]


def oracle_tokens(lm, prompts, settings, seeds, length):
    """The static-batch loop's tokens for prompts decoded together, start to end (no stop at end of text)."""
    ids = [lm.tokenizer.encode(p) for p in prompts]
    dec = BatchDecoder(
        lm.model,
        ids,
        settings=settings,
        generators=[make_generator(s) for s in seeds],
        max_new=length,
        pad_id=lm.tokenizer.eot_id,
    )
    out = [[] for _ in prompts]
    while dec.active:
        for res in dec.step():
            out[res.row].append(res.token)
    return out


def engine_tokens(lm, prompts, settings, seeds, length, max_rows=8):
    engine = Engine(lm.model, lm.tokenizer, max_rows=max_rows)
    seqs = [
        s
        for i, p in enumerate(prompts)
        for s in make_sequences(
            [p],
            [lm.tokenizer.encode(p)],
            per_prompt=1,
            seed=0,
            settings=settings[i],
            max_new=length,
            stops=[],
            include_prefix=False,
            stop_at_eot=False,
            logprobs=0,
            index_base=i,
        )
    ]
    for s, seed in zip(seqs, seeds):  # the oracle's generators
        s.generator.manual_seed(seed)
    request = Request(seqs)
    engine.add(request)
    while not engine.idle:
        engine.step()
    assert request.outbox[-1] is DONE and all(s.status is Status.FINISHED for s in seqs)
    return [s.sample.tokens for s in seqs]


@pytest.mark.parametrize("kind", ["shared", "mixed"])
def test_the_engine_computes_what_the_static_loop_did(lm_tiny, kind):
    prompts = ["Hi", "A much longer prompt, with several more tokens", "Middle one", "x"]
    if kind == "shared":
        settings = [SamplingSettings(**SETTINGS)] * 4
    else:
        settings = [
            SamplingSettings(temperature=0),
            SamplingSettings(top_k=5, repetition_penalty=1.2),
            SamplingSettings(top_p=0.7, presence_penalty=0.5),
            SamplingSettings(logit_bias=((11, 3.0),)),
        ]
    seeds = [101, 202, 303, 404]
    expected = oracle_tokens(lm_tiny, prompts, settings, seeds, 20)
    # rows alone in the oracle give the same tokens as together there: a row's draw is its own
    assert [oracle_tokens(lm_tiny, [p], [s], [g], 20)[0] for p, s, g in zip(prompts, settings, seeds)] == expected
    assert engine_tokens(lm_tiny, prompts, settings, seeds, 20) == expected
    assert engine_tokens(lm_tiny, prompts, settings, seeds, 20, max_rows=2) == expected  # rows join as others leave


@pytest.mark.parametrize("equal", [False, True], ids=["lengths differ", "one length"])
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_prompts_prefilled_together_get_what_each_gets_alone(hf_tiny, dtype, equal):
    """One pass over several whole prompts leaves each prompt's keys, values and last logits as its
    own prefill does (to fp32 rounding: the GEMM sums in another order), on the kernels' model too.
    Prompts of one length take attention's batched form, the others one call each."""
    lm = gpt2kit.load(hf_tiny, device="cpu", dtype=dtype)
    texts = ("Hi", "A much longer prompt, with several more tokens", "x y z")
    prompts = (
        [[11, 22, 33, 44], [55, 66, 77, 88], [99, 11, 22, 33]] if equal else [lm.tokenizer.encode(t) for t in texts]
    )
    alone = [Prefill(lm.model, ids, []) for ids in prompts]
    for p in alone:
        p.advance(len(p.ids))
    together = [Prefill(lm.model, ids, []) for ids in prompts]
    prefill_together(together)
    for a, b in zip(alone, together):
        assert b.done and b.cache.length == a.cache.length == len(a.ids)
        assert torch.allclose(b.logits, a.logits, atol=1e-4, rtol=1e-4)
        assert torch.allclose(b.cache.k, a.cache.k, atol=1e-5) and torch.allclose(b.cache.v, a.cache.v, atol=1e-5)


def test_prompts_prefilled_together_cost_their_own_tokens_only(lm_tiny):
    """The pass runs the prompts back to back: the blocks see 1 + 9 + 3 token rows, not 3 x 9 (padded to
    the longest, short prompts would pay for the long one's length)."""
    prompts = [[5], list(range(10, 19)), [7, 8, 9]]
    seen = []
    block = getattr(lm_tiny.model, "reference", lm_tiny.model).h[0]
    hook = block.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0] * args[0].shape[1]))
    try:
        prefill_together([Prefill(lm_tiny.model, ids, []) for ids in prompts])
    finally:
        hook.remove()
    assert seen == [13]


def test_prompts_back_to_back_refuse_what_they_cannot_compute(lm_tiny):
    """An empty prompt would hand out its neighbour's last logits, and training's checkpointed blocks would
    let prompts attend across each other: both are refused."""
    model = getattr(lm_tiny.model, "reference", lm_tiny.model)
    idx = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="back to back"):
        model(idx, lengths=[0, 3])
    model.train()
    try:
        with pytest.raises(ValueError, match="inference"):
            model(idx, lengths=[1, 2])
    finally:
        model.eval()


def test_rows_past_the_context_slide_alone(lm_tiny):
    """A row slides its window when its own context fills, whatever its neighbours' lengths."""
    n_ctx = lm_tiny.config.n_ctx
    prompts = ["Hi", " word" * (n_ctx - 10)]
    s = [SamplingSettings(top_k=20)] * 2
    together = engine_tokens(lm_tiny, prompts, s, [1, 2], 2 * n_ctx)
    assert together == [engine_tokens(lm_tiny, [p], [x], [g], 2 * n_ctx)[0] for p, x, g in zip(prompts, s, [1, 2])]
    assert all(len(t) == 2 * n_ctx for t in together)


def test_waiting_requests_take_turns_and_cancelled_rows_leave(lm_tiny):
    engine = Engine(lm_tiny.model, lm_tiny.tokenizer, max_rows=2)

    def mk(p, k, n):
        return list(
            make_sequences(
                [p],
                [lm_tiny.tokenizer.encode(p)],
                per_prompt=n,
                seed=1,
                settings=SamplingSettings(),
                max_new=30,
                stops=[],
                include_prefix=False,
                stop_at_eot=False,
                logprobs=0,
                index_base=k,
            )
        )

    big, small = Request(mk("Big", 0, 4)), Request(mk("Small", 10, 1))
    engine.add(big)
    engine.add(small)
    engine.step()
    assert {s.key for s, _ in engine.live.values()} == {0, 1}  # the first group of the big request, 2 rows
    big.cancel()
    engine.step()
    while not engine.idle:
        engine.step()
    assert small.outbox[-1] is DONE and small.seqs[0].sample.finish_reason == "length"
    assert [s.sample.finish_reason for s in big.seqs] == ["cancelled"] * 4


def test_a_step_no_prompt_joins_hands_the_sampler_the_last_steps_own_logits(lm_tiny):
    """The engine offers the batch its finished prompts every step, most steps none: joining nothing keeps the
    last feed's logits as the batch's, rather than stacking every row's again (a copy of B x n_vocab a step)."""
    engine = Engine(lm_tiny.model, lm_tiny.tokenizer, max_rows=4)
    seqs = list(
        make_sequences(
            ["One", "Two"],
            [lm_tiny.tokenizer.encode(p) for p in ("One", "Two")],
            per_prompt=1,
            seed=3,
            settings=SamplingSettings(top_k=5),
            max_new=6,
            stops=[],
            include_prefix=False,
            stop_at_eot=False,
            logprobs=0,
            index_base=0,
        )
    )
    engine.add(Request(seqs))
    engine.step()
    engine.step()  # both rows decode now; this step's feed made the batch's logits
    fed = engine.batch.fed
    assert fed is not None and fed.shape[0] == 2
    engine.batch.join([])
    assert engine.batch.logits() is fed
    while not engine.idle:
        engine.step()
    assert all(s.status is Status.FINISHED and len(s.sample.tokens) == 6 for s in seqs)


def served_text(url, body):
    req = urllib.request.Request(
        url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return [c["text"] for c in sorted(json.load(r)["choices"], key=lambda c: c["index"])]


@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_one_seed_one_text_through_every_front_end(hf_tiny, dtype):
    """gpt2kit generate, LM.generate and /v1/completions (alone, and joining a running batch of 8 other
    requests of other settings) give the same text, token for token, at fp32 and at the default dtype."""
    lm = gpt2kit.load(hf_tiny, device="cpu", dtype=dtype)
    library = lm.generate(PROMPT, length=LENGTH, seed=SEED, include_prefix=False, nsamples=2, **SETTINGS)
    r = run_cli(
        "generate",
        PROMPT,
        "--model",
        hf_tiny,
        "--dtype",
        dtype,
        "--length",
        LENGTH,
        "--seed",
        SEED,
        "--no-include-prefix",
        "--nsamples",
        2,
        "--format",
        "jsonl",
        *[a for k, v in SETTINGS.items() for a in (f"--{k.replace('_', '-')}", v)],
    )
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["text"] for line in r.stdout.splitlines()] == library
    body = {"prompt": PROMPT, "max_tokens": LENGTH, "seed": SEED, "n": 2, **SETTINGS}
    proc, url = start_server(hf_tiny, "--dtype", dtype, "--max-batch", "16")
    try:
        assert served_text(url, body) == library
        others = [None] * len(OTHERS)
        threads = [
            threading.Thread(target=lambda i=i: others.__setitem__(i, served_text(url, OTHERS[i])))
            for i in range(len(OTHERS))
        ]
        for t in threads:
            t.start()
        mixed = served_text(url, body)
        for t in threads:
            t.join(120)
        assert mixed == library
        assert all(o is not None for o in others)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize("alpha, k", [(0.6, 4), (0.3, 6)])
def test_contrastive_search_in_the_engine_gives_the_references_tokens(hf_tiny, lm_tiny, alpha, k):
    """penalty_alpha rows run their k candidates apart from the batch; alone or beside sampled rows, their tokens
    are Su et al.'s formula over transformers' own hidden states (test_samplers.reference_contrastive)."""
    from test_samplers import reference_contrastive
    from transformers import GPT2LMHeadModel

    reference = GPT2LMHeadModel.from_pretrained(hf_tiny).eval()
    prompt = "The cat sat on the mat. The cat"
    ids = lm_tiny.tokenizer.encode(prompt)
    expected = reference_contrastive(reference, ids, 8, k, alpha)[len(ids) :]
    search = SamplingSettings(top_k=k, penalty_alpha=alpha)
    alone = engine_tokens(lm_tiny, [prompt], [search], [1], 8)
    mixed = engine_tokens(
        lm_tiny,
        ["Other", prompt, "Another one"],
        [SamplingSettings(top_k=40), search, SamplingSettings(temperature=0)],
        [2, 1, 3],
        8,
    )
    assert alone[0] == expected and mixed[1] == expected
