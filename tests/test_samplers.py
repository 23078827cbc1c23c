"""The samplers of issue 29 (gpt2kit.samplers) against their references: transformers' warpers on the same
logits, llama.cpp's samplers through llama-cpp-python's C API on the same logits and tokens, and contrastive
search against a plain reference written from Su et al.'s formula over transformers' GPT2LMHeadModel."""

import ctypes
import dataclasses
import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2kit.errors import UserError
from gpt2kit.options import GenerateOptions, SamplingSettings
from gpt2kit.samplers import (
    HELP,
    STAGES,
    Dry,
    EpsilonCutoff,
    EtaCutoff,
    MinP,
    MirostatV2,
    TopNSigma,
    TypicalP,
    Xtc,
    contrastive_pick,
)
from gpt2kit.samplers.dry import Breakers, repeat_lengths
from gpt2kit.sequence import Sequence
from gpt2kit.tokenizer import gpt2_tokenizer

quick = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def row(tokens=(), seed=0, settings=SamplingSettings()):
    """The engine's Sequence for one row: its tokens (prompt and output), its own generator, its state."""
    return Sequence(key=seed, prompt=None, ids=list(tokens), seed=seed, settings=settings)


def kept(logits: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(logits)


# --- the settings ------------------------------------------------------------------------------------------


def test_every_sampler_is_off_by_default_and_each_turns_on():
    off = SamplingSettings(temperature=0.8)
    assert not [stage.name for stage in STAGES if stage.wants(off)]
    on = {
        "dry": dict(dry_multiplier=0.8),
        "top_n_sigma": dict(top_n_sigma=1.0),
        "min_p": dict(min_p=0.05),
        "typical_p": dict(typical_p=0.9),
        "epsilon_cutoff": dict(epsilon_cutoff=3e-4),
        "eta_cutoff": dict(eta_cutoff=3e-4),
        "xtc": dict(xtc_probability=0.5),
        "mirostat": dict(mirostat=2),
    }
    assert [stage.name for stage in STAGES] == list(on)  # order.py's order
    for stage in STAGES:
        s = dataclasses.replace(off, **on[stage.name])
        assert [other.name for other in STAGES if other.wants(s)] == [stage.name]
        # greedy takes the top token whatever a truncation cuts; DRY's penalty still changes which that is
        assert stage.wants(dataclasses.replace(s, temperature=0)) == (stage.name == "dry")
    assert {stage.name for stage in STAGES if stage.before_temperature} == {"dry", "top_n_sigma"}


def test_mirostat_turns_the_truncations_off_but_not_dry():
    s = SamplingSettings(
        temperature=1.0,
        mirostat=2,
        min_p=0.1,
        typical_p=0.5,
        epsilon_cutoff=0.01,
        eta_cutoff=0.01,
        top_n_sigma=1.0,
        xtc_probability=1.0,
        dry_multiplier=1.0,
    )
    assert [stage.name for stage in STAGES if stage.wants(s)] == ["dry", "mirostat"]


@pytest.mark.parametrize(
    "field, value, extra",
    [
        ("min_p", 1.5, {}),
        ("min_p", -0.1, {}),
        ("min_p", math.nan, {}),
        ("typical_p", 1.01, {}),
        ("epsilon_cutoff", 1.0, {}),
        ("eta_cutoff", -1e-3, {}),
        ("top_n_sigma", math.inf, {}),
        ("top_n_sigma", math.nan, {}),
        ("mirostat", 1, {}),
        ("mirostat", 3, {}),
        ("mirostat_tau", -1.0, {}),
        ("mirostat_tau", math.nan, {}),
        ("mirostat_eta", 1.5, {}),
        ("dry_multiplier", -0.5, {}),
        ("dry_multiplier", math.inf, {}),
        ("dry_base", 0.9, {}),
        ("dry_allowed_length", -1, {}),
        ("dry_penalty_last_n", -2, {}),
        ("dry_sequence_breakers", ("",), {}),
        ("dry_sequence_breakers", ("x" * 41,), {}),
        ("dry_sequence_breakers", "\n", {}),
        ("dry_sequence_breakers", (1,), {}),
        ("xtc_threshold", 1.5, {}),
        ("xtc_probability", -0.1, {}),
        ("penalty_alpha", 1.5, {"top_k": 4}),
        ("penalty_alpha", 0.6, {"top_k": 1}),
    ],
)
def test_a_value_out_of_range_is_one_line_naming_the_field(field, value, extra):
    with pytest.raises(UserError) as e:
        SamplingSettings(**{field: value}, **extra)
    assert str(e.value).startswith(field) and "\n" not in str(e.value)
    if field in GenerateOptions.SAMPLERS:
        with pytest.raises(UserError):  # the same rule through the options every front end builds
            GenerateOptions(**{field: value}, **extra).sampling()


def test_the_edges_of_each_range_are_accepted():
    SamplingSettings(
        min_p=1.0,
        typical_p=0.0,
        epsilon_cutoff=0.999,
        eta_cutoff=0.0,
        top_n_sigma=-1.0,
        mirostat=2,
        mirostat_tau=0.0,
        mirostat_eta=1.0,
        dry_multiplier=0.0,
        dry_base=1.0,
        dry_allowed_length=0,
        dry_penalty_last_n=-1,
        dry_sequence_breakers=(),
        xtc_threshold=1.0,
        xtc_probability=1.0,
        penalty_alpha=1.0,
        top_k=2,
    )


def test_generate_options_carry_every_sampler_with_its_default():
    new = [f.name for f in dataclasses.fields(SamplingSettings) if f.name in GenerateOptions.SAMPLERS]
    assert new == list(GenerateOptions.SAMPLERS)
    for name in GenerateOptions.SAMPLERS:
        assert getattr(GenerateOptions(), name) == getattr(SamplingSettings(), name)
    s = GenerateOptions(min_p=0.1, dry_sequence_breakers=["\n"], temperature=0.7).sampling()
    assert s.min_p == 0.1 and s.dry_sequence_breakers == ("\n",) and hash(s)  # a JSON list becomes a tuple
    assert "penalty_alpha" in {f.name for f in dataclasses.fields(GenerateOptions)}  # contrastive search runs


def test_each_sampler_setting_has_one_line_of_help_and_reading_it_loads_no_torch():
    assert set(HELP) == set(GenerateOptions.SAMPLERS)
    assert all(text and "\n" not in text for text in HELP.values())
    probe = "import sys\nfrom gpt2kit.samplers.help import HELP\nprint('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


# --- min-p, typical, epsilon, eta: the tokens transformers' warpers keep -----------------------------------


def warper(name: str, value: float):
    from transformers.generation import logits_process as lp

    return {
        "min_p": lambda: lp.MinPLogitsWarper(value),
        "typical_p": lambda: lp.TypicalLogitsWarper(mass=value),
        "epsilon_cutoff": lambda: lp.EpsilonLogitsWarper(value),
        "eta_cutoff": lambda: lp.EtaLogitsWarper(value),
    }[name]()


OURS = {"min_p": MinP(), "typical_p": TypicalP(), "epsilon_cutoff": EpsilonCutoff(), "eta_cutoff": EtaCutoff()}
RANGE = {"min_p": (1e-3, 1.0), "typical_p": (1e-3, 0.999), "epsilon_cutoff": (1e-4, 0.999), "eta_cutoff": (1e-4, 0.999)}


def agree_with_transformers(name: str, value: float, logits: torch.Tensor) -> None:
    s = SamplingSettings(temperature=1.0, **{name: value})
    ours = OURS[name].apply(logits.clone(), s, [row() for _ in logits])
    # Row by row: PyTorch sums a lone row in another order than a batch's rows, and our stages sum each row by
    # itself (so that a row's cutoff never depends on its batch); so does transformers with one row at a time.
    theirs = torch.cat([warper(name, value)(None, r.clone()[None]) for r in logits])
    assert torch.equal(kept(ours), kept(theirs)), (name, value)
    assert torch.equal(ours[kept(ours)], logits[kept(ours)])  # what stays is untouched
    assert kept(ours).any(-1).all()


# Rows with ties: a few values drawn again and again, random ones, and tokens an earlier stage filtered.
TIES = st.sampled_from([0.0, 1.0, -1.0, 2.5, 7.0, float("-inf")])
logit_rows = st.integers(1, 3).flatmap(
    lambda b: st.integers(2, 48).flatmap(
        lambda v: st.lists(
            st.lists(st.one_of(TIES, st.floats(-20, 20, width=32)), min_size=v, max_size=v).filter(
                lambda r: any(math.isfinite(x) for x in r)
            ),
            min_size=b,
            max_size=b,
        )
    )
)


@pytest.mark.parametrize("name", list(OURS))
@quick
@given(rows=logit_rows, data=st.data())
def test_the_same_tokens_as_transformers_on_random_logits_with_ties(name, rows, data):
    value = data.draw(st.floats(*RANGE[name]), label=name)
    agree_with_transformers(name, value, torch.tensor(rows, dtype=torch.float32))


@pytest.fixture(scope="module")
def reference(hf_tiny):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_tiny, torch_dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def real_logits(reference):
    """A tiny random GPT-2's logits at 8 positions of a real text, over all 50257 tokens."""
    ids = gpt2_tokenizer().encode("The quick brown fox jumps over the lazy dog, again and again.")[:8]
    with torch.no_grad():
        return reference(torch.tensor([ids])).logits[0]  # (8, 50257)


@pytest.mark.parametrize("name", list(OURS))
@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0])  # the random model's near-uniform rows, and peaked ones
def test_the_same_tokens_as_transformers_on_a_models_logits(name, scale, real_logits):
    for value in {
        "min_p": (0.01, 0.1, 0.5, 0.9),
        "typical_p": (0.2, 0.5, 0.9, 0.99),
        "epsilon_cutoff": (1e-5, 3e-4, 0.01),
        "eta_cutoff": (1e-5, 3e-4, 0.01),
    }[name]:
        agree_with_transformers(name, value, real_logits * scale)


# --- llama.cpp's samplers through llama-cpp-python's C API --------------------------------------------------


def lib():
    import llama_cpp

    return llama_cpp


class Candidates:
    """A llama_token_data_array over given logits (ids 0..V-1), as llama_sampler_sample builds one."""

    def __init__(self, logits):
        self.buf = np.zeros(len(logits), dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data
        self.buf["id"], self.buf["logit"] = np.arange(len(logits)), logits
        self.array = lib().llama_token_data_array(
            data=self.buf.ctypes.data_as(lib().llama_token_data_p), size=len(logits), selected=-1, sorted=False
        )

    def apply(self, sampler) -> "Candidates":
        lib().llama_sampler_apply(sampler, ctypes.byref(self.array))
        return self

    def _left(self) -> np.ndarray:
        """The entries still in the array (a sampler may sort them, move its start and shorten it)."""
        start = (ctypes.addressof(self.array.data.contents) - self.buf.ctypes.data) // self.buf.itemsize
        return self.buf[start : start + self.array.size]

    def logits(self, n_vocab: int) -> np.ndarray:
        """What is left, by id (-inf for a token filtered out or dropped from the array)."""
        out = np.full(n_vocab, -np.inf, dtype=np.float32)
        left = self._left()
        out[left["id"]] = left["logit"]
        return out

    def selected(self) -> int:
        return int(self._left()["id"][self.array.selected])


needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install 'gpt2kit[export-test]')",
)


@needs_llama
def test_top_n_sigma_keeps_what_llama_cpp_keeps():
    g = np.random.default_rng(0)
    for trial in range(60):
        V = int(g.integers(2, 300))
        logits = (g.normal(size=V) * g.uniform(0.5, 5)).astype(np.float32)
        if trial % 3 == 0:
            logits[g.random(V) < 0.3] = -np.inf  # filtered by an earlier stage: out of the statistics
            logits[0] = 1.0
        if trial % 4 == 0:
            logits = np.round(logits)  # ties
        n = float(g.choice([0.5, 1.0, 1.5, 2.0, 3.0]))
        ours = TopNSigma().apply(torch.tensor(logits)[None], SamplingSettings(top_n_sigma=n), [row()])[0]
        sampler = lib().llama_sampler_init_top_n_sigma(n)
        theirs = Candidates(logits).apply(sampler).logits(V)
        lib().llama_sampler_free(sampler)
        assert np.array_equal(np.isfinite(ours.numpy()), np.isfinite(theirs)), (trial, n)


@needs_llama
def test_xtc_keeps_what_llama_cpp_keeps_when_it_fires():
    g = np.random.default_rng(1)
    for trial in range(60):
        V = int(g.integers(2, 60))
        logits = (g.normal(size=V) * g.uniform(0.5, 4)).astype(np.float32)
        threshold = float(g.choice([0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]))
        s = SamplingSettings(temperature=1.0, xtc_probability=1.0, xtc_threshold=threshold)  # always fires
        ours = Xtc().apply(torch.tensor(logits)[None], s, [row(seed=trial)])[0]
        sampler = lib().llama_sampler_init_xtc(1.0, threshold, 1, trial)
        theirs = Candidates(logits).apply(sampler).logits(V)
        lib().llama_sampler_free(sampler)
        assert np.array_equal(np.isfinite(ours.numpy()), np.isfinite(theirs)), (trial, threshold)


def test_xtc_fires_with_its_probability_from_each_rows_own_generator():
    logits = torch.tensor([[3.0, 2.9, 2.8, 0.0, -1.0]]).repeat(400, 1)
    s = SamplingSettings(temperature=1.0, xtc_probability=0.3, xtc_threshold=0.1)
    rows = [row(seed=i) for i in range(400)]
    out = Xtc().apply(logits, s, rows)
    fired = ~kept(out[:, 0])
    assert 0.22 < fired.float().mean() < 0.38
    again = [row(seed=i) for i in range(400)]
    alone = torch.cat([Xtc().apply(logits[i : i + 1], s, [again[i]]) for i in range(400)])
    assert torch.equal(kept(out), kept(alone))  # each row's own chance, whatever shares its batch
    assert (kept(out[fired]) == torch.tensor([False, False, True, True, True])).all()  # 2.8 the last top choice


@needs_llama
def test_mirostat_v2_truncates_and_moves_mu_as_llama_cpp_does():
    g = np.random.default_rng(2)
    for tau, eta in ((3.0, 0.1), (5.0, 0.3), (1.0, 1.0)):
        s = SamplingSettings(temperature=1.0, mirostat=2, mirostat_tau=tau, mirostat_eta=eta)
        stage, seq = MirostatV2(), row()
        stage.start(s, seq)
        sampler = lib().llama_sampler_init_mirostat_v2(1234, tau, eta)
        for step in range(40):
            V = 120
            logits = (g.normal(size=V) * g.uniform(1, 4)).astype(np.float32)
            cand = Candidates(logits).apply(sampler)  # llama.cpp truncates and draws with its own RNG
            ours = stage.apply(torch.tensor(logits)[None], s, [seq])[0]
            assert np.array_equal(np.isfinite(ours.numpy()), np.isfinite(cand.logits(V))), (tau, eta, step)
            stage.accept(s, seq, cand.selected())  # the same token drawn: mu must move the same way
        lib().llama_sampler_free(sampler)
        assert seq.state["mirostat"]["mu"] != 2 * tau


def test_mirostat_mu_follows_the_drawn_tokens_surprise():
    s = SamplingSettings(temperature=1.0, mirostat=2, mirostat_tau=1.0, mirostat_eta=0.5)
    stage, seq = MirostatV2(), row()
    stage.start(s, seq)
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.125]])  # surprises 1, 2, 3, 3 bits; mu = 2 keeps two
    out = stage.apply(probs.log(), s, [seq])
    assert kept(out).tolist() == [[True, True, False, False]]
    stage.accept(s, seq, 1)  # p = 1/3 among those kept: log2(3) bits
    assert seq.state["mirostat"]["mu"] == pytest.approx(2.0 - 0.5 * (math.log2(3) - 1.0))
    stage.accept(s, seq, 0)  # nothing truncated since: mu stays
    assert seq.state["mirostat"]["mu"] == pytest.approx(2.0 - 0.5 * (math.log2(3) - 1.0))


# --- DRY --------------------------------------------------------------------------------------------------


def test_dry_on_llama_cpps_own_example():
    # llama_sampler_dry_apply's comment: a b c c b c y a b c. The latest "a b c" also ends at the first c
    # (3 tokens), so the c after it would make 4; "b c" ends at the second-last c, so y would make 3.
    window = np.array([0, 1, 2, 2, 1, 2, 3, 0, 1, 2])
    assert repeat_lengths(window, 10).tolist() == [0, 0, 3, 1, 0, 2, 0, 0, 0]
    s = SamplingSettings(dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=2, dry_sequence_breakers=())
    assert Dry().row_penalties(window.tolist(), s, Breakers({}, 8)) == {2: 2.0, 3: 1.0}
    assert repeat_lengths(window, 2).tolist() == [0, 0, 2, 1, 0, 2, 0, 0, 0]  # a breaker's limit caps them


@pytest.mark.parametrize(
    "probs, tokens, expected, multiplier, base, allowed, last_n, breakers",
    [
        # llama.cpp's tests/test-sampling.cpp test_dry cases: probabilities before and after
        ([0.25] * 4, [0, 1], [0.25] * 4, 1.0, 1.1, 2, 4, []),
        ([0.25] * 4, [0, 1, 2, 0, 1], [0.296923, 0.296923, 0.109232, 0.296923], 1.0, 1.1, 2, 5, []),
        ([0.2] * 5, [0, 1, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 2, 6, [[3]]),
        ([0.2] * 5, [0, 1, 2, 0, 1], [0.241818, 0.241818, 0.032727, 0.241818, 0.241818], 2.0, 1.1, 2, 5, []),
        ([0.2] * 5, [0, 1, 2, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 4, 7, []),
    ],
)
def test_dry_gives_llama_cpps_test_probabilities(probs, tokens, expected, multiplier, base, allowed, last_n, breakers):
    s = SamplingSettings(
        dry_multiplier=multiplier, dry_base=base, dry_allowed_length=allowed, dry_penalty_last_n=last_n
    )
    heads = {b[0]: {tuple(b[1:])} for b in breakers}
    logits = torch.tensor(probs).log()
    for token, penalty in Dry().row_penalties(tokens, s, Breakers(heads, len(probs))).items():
        logits[token] -= penalty
    assert logits.softmax(-1).tolist() == pytest.approx(expected, abs=1e-5)


def llama_dry(vocab, s: SamplingSettings):
    texts = [b.encode("utf-8") for b in s.dry_sequence_breakers]
    return lib().llama_sampler_init_dry(
        vocab,
        s.dry_multiplier,
        s.dry_base,
        s.dry_allowed_length,
        s.dry_penalty_last_n,
        (ctypes.c_char_p * len(texts))(*texts),
        len(texts),
    )


def agree_with_llama_dry(vocab, s: SamplingSettings, tokens: list[int], logits: np.ndarray, stage: Dry) -> None:
    sampler = llama_dry(vocab, s)
    for token in tokens:  # what llama.cpp's server does with the prompt's tokens, then with each drawn one
        lib().llama_sampler_accept(sampler, token)
    theirs = Candidates(logits).apply(sampler).logits(len(logits))
    lib().llama_sampler_free(sampler)
    ours = stage.apply(torch.tensor(logits)[None], s, [row(tokens)])[0].numpy()
    assert np.array_equal(ours != logits, theirs != logits)  # the same tokens penalised
    # by the same amounts; llama.cpp takes the multiplier and base as float32, hence a last bit's difference
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@needs_llama
def test_dry_penalises_as_llama_cpp_does_on_repetitive_token_streams():
    g = np.random.default_rng(3)
    stage = Dry()
    for trial in range(150):
        alphabet = int(g.integers(2, 8))
        phrase = g.integers(0, alphabet, size=int(g.integers(1, 6)))
        # phrases again and again, with noise: repeats of every length
        tokens = np.concatenate(
            [phrase if g.random() < 0.7 else g.integers(0, alphabet, size=3) for _ in range(int(g.integers(1, 15)))]
        ).tolist()
        s = SamplingSettings(
            dry_multiplier=float(g.choice([0.5, 0.8, 2.0])),
            dry_base=float(g.choice([1.0, 1.75, 3.0])),
            dry_allowed_length=int(g.integers(0, 4)),
            dry_penalty_last_n=int(g.integers(1, 80)),
            dry_sequence_breakers=(),
        )
        logits = (g.normal(size=16) * 2).astype(np.float32)
        agree_with_llama_dry(None, s, tokens, logits, stage)  # no breakers: llama.cpp needs no vocabulary


@pytest.fixture(scope="module")
def llama_vocab(hf_tiny, tmp_path_factory):
    """llama.cpp's GPT-2 vocabulary, read from a GGUF that gpt2kit exported: its own tokenizer, to match breakers."""
    from llama_cpp import Llama

    from gpt2kit.export import export

    path = export(hf_tiny, tmp_path_factory.mktemp("gguf") / "tiny.gguf", type="f32")
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield llm._model.vocab
    llm.close()


@needs_llama
def test_dry_sequence_breakers_match_llama_cpps_in_gpt2s_tokens(llama_vocab):
    tok = gpt2_tokenizer()
    pieces = [
        "Once upon a time",
        " there was a cat",
        ":",
        ' "quoted"',
        "\n",
        "\n\n",
        " *bold*",
        " the end",
        " the",
        " end",
        " naïve café",
        "é",
        " and so on",
        ", and",
        " again",
    ]
    # llama.cpp's defaults; breakers of several tokens, one cut inside a character; one a prefix of another
    breakers = [("\n", ":", '"', "*"), ("\n\n", " the end", "é", "so on"), (" the", " the end", ":"), ()]
    g = np.random.default_rng(4)
    stages = {b: Dry(tok) for b in breakers}
    for trial in range(40):
        text = "".join(g.choice(pieces, size=int(g.integers(3, 40))))
        tokens = tok.encode(text)
        s = SamplingSettings(
            dry_multiplier=0.8,
            dry_base=1.75,
            dry_allowed_length=int(g.integers(1, 4)),
            dry_penalty_last_n=int(g.integers(8, 200)),
            dry_sequence_breakers=breakers[trial % 4],
        )
        logits = g.normal(size=tok.n_vocab).astype(np.float32)
        agree_with_llama_dry(llama_vocab, s, tokens, logits, stages[s.dry_sequence_breakers])


def test_dry_repeats_never_run_across_a_breaker():
    tok = gpt2_tokenizer()
    stage = Dry(tok)
    text = tok.encode(" red green\n blue yellow purple red green\n blue yellow")
    purple = tok.encode(" purple")[0]

    def penalties(tokens, **kw):
        s = SamplingSettings(dry_multiplier=1.0, dry_base=1.75, dry_allowed_length=2, **kw)
        return stage.row_penalties(tokens, s, stage.breakers(s.dry_sequence_breakers))

    # " red green\n blue yellow" again: " purple" would make the repeat 6 tokens long, 1.75 ** (5 - 2)
    assert penalties(text, dry_sequence_breakers=()) == {purple: 1.75**3}
    # but only " blue yellow" counts after the new line: 2 tokens, the allowed length, 1.75 ** 0
    assert penalties(text) == {purple: 1.0}
    assert penalties(text + tok.encode(":")) == {}  # right after a breaker nothing repeats yet
    # The longest breaker ending latest counts: " the end" (two tokens) leaves " go away" to repeat, " the" alone
    # " end go away" (" now" would make 3 or 4)
    ends = tok.encode(" the end go away now the end go away")
    now = tok.encode(" now")[0]
    assert penalties(ends, dry_sequence_breakers=(" the", " the end")) == {now: 1.0}
    assert penalties(ends, dry_sequence_breakers=(" the",)) == {now: 1.75}
    assert len(tok.encode(" red green\n")) == 3 and len(tok.encode(" blue yellow purple")) == 3


# --- every stage: a row's result depends on that row alone --------------------------------------------------

ALL_ON = SamplingSettings(
    temperature=0.9,
    min_p=0.02,
    typical_p=0.95,
    epsilon_cutoff=1e-4,
    eta_cutoff=1e-4,
    top_n_sigma=3.0,
    dry_multiplier=0.8,
    xtc_probability=0.5,
    xtc_threshold=0.05,
)


def run_stages(logits: torch.Tensor, s: SamplingSettings, seqs: list) -> torch.Tensor:
    for stage in STAGES:
        if stage.wants(s):
            logits = stage.apply(logits, s, seqs)
    return logits


@pytest.mark.parametrize("s", [ALL_ON, dataclasses.replace(ALL_ON, mirostat=2, mirostat_tau=4.0)])
def test_a_rows_samplers_never_depend_on_its_batch(s, real_logits):
    """The invariant of the engine (a seed's text never depends on its batch), for every stage and its state:
    four rows stepped together give what each gives alone."""
    prompts = [[464, 2068, 7586], [464, 2068], [40, 1101, 257, 3797, 13], [464, 2068, 7586]]
    together = [row(p, seed=i) for i, p in enumerate(prompts)]
    alone = [row(p, seed=i) for i, p in enumerate(prompts)]
    for stage in STAGES:
        for seq in together + alone:
            if stage.wants(s) and hasattr(stage, "start"):
                stage.start(s, seq)
    for step in range(8):
        logits = (real_logits[step] * 40).expand(4, -1).clone()  # (4, V), the same for every row
        batch = run_stages(logits, s, together)
        single = torch.cat([run_stages(logits[i : i + 1], s, [alone[i]]) for i in range(4)])
        assert torch.equal(batch, single), step
        for i, (a, b) in enumerate(zip(together, alone)):
            token = int(torch.multinomial(batch[i].softmax(-1), 1, generator=torch.Generator().manual_seed(step)))
            for seq in (a, b):
                seq.tokens.append(token)
                for stage in STAGES:
                    if stage.wants(s) and hasattr(stage, "accept"):
                        stage.accept(s, seq, token)
    assert together[0].state == {} or all(
        torch.equal(torch.tensor(a.state["mirostat"]["mu"]), torch.tensor(b.state["mirostat"]["mu"]))
        for a, b in zip(together, alone)
    )


def test_a_rows_sums_are_taken_alone_whatever_its_batch():
    from gpt2kit.samplers.truncation import per_row

    x = torch.randn(4, 50257, generator=torch.Generator().manual_seed(0)) * 30
    alone = torch.cat([per_row(x[i : i + 1], torch.sum) for i in range(4)])
    assert torch.equal(per_row(x, torch.sum), alone)


# --- contrastive search: Su et al.'s formula over transformers' hidden states ------------------------------


def reference_contrastive(model, ids: list[int], steps: int, k: int, alpha: float) -> list[int]:
    """Contrastive search written from the paper, one candidate at a time, on transformers' GPT2LMHeadModel:
    x_t = argmax over the top-k v of (1 - alpha) p(v | x<t) - alpha max_j cos(h_v, h_xj)."""
    ids = list(ids)
    for _ in range(steps):
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
        probs = out.logits[0, -1].softmax(-1)
        context = out.hidden_states[-1][0]  # (T, C): after ln_f, as gpt2kit's hidden_only
        best, choice = -math.inf, None
        for p, v in zip(*probs.topk(k)):
            with torch.no_grad():
                h = model(torch.tensor([ids + [int(v)]]), output_hidden_states=True).hidden_states[-1][0, -1]
            likeness = max(float(h @ c / (h.norm() * c.norm())) for c in context)
            score = (1 - alpha) * float(p) - alpha * likeness
            if score > best:
                best, choice = score, int(v)
        ids.append(choice)
    return ids


def gpt2kit_contrastive(model, ids: list[int], steps: int, k: int, alpha: float) -> list[int]:
    """The same search on gpt2kit's model: the k candidates in one batch, scored by contrastive_pick."""
    ids = list(ids)
    for _ in range(steps):
        with torch.no_grad():
            context = model(torch.tensor([ids]), hidden_only=True)  # (1, T, C)
            probs = torch.nn.functional.linear(context[:, -1], model.wte.weight).softmax(-1)  # (1, V)
            top_p, top_ids = probs.topk(k)  # (1, k)
            rows = torch.tensor(ids).expand(k, -1)
            hidden = model(torch.cat([rows, top_ids.T], 1), hidden_only=True, last_only=True)  # (k, 1, C)
        pick = contrastive_pick(top_p, hidden.transpose(0, 1), context, alpha)
        ids.append(int(top_ids[0, pick[0]]))
    return ids


@pytest.mark.parametrize("alpha, k", [(0.6, 4), (0.3, 6)])
def test_contrastive_search_gives_the_references_tokens(hf_tiny, reference, alpha, k):
    from gpt2kit.formats import build_model, read_checkpoint

    ck = read_checkpoint(hf_tiny)
    model = build_model(ck.config, ck.state_dict, ck.path).eval()
    prompt = gpt2_tokenizer().encode("The cat sat on the mat. The cat")
    ours = gpt2kit_contrastive(model, prompt, 8, k, alpha)
    assert ours == reference_contrastive(reference, prompt, 8, k, alpha)
    assert ours != gpt2kit_contrastive(model, prompt, 8, k, 0.0)  # the penalty changed the choice somewhere


def test_contrastive_pick_leaves_padding_out():
    probs = torch.tensor([[0.6, 0.4]])
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2)
    context = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # the second position is padding, like candidate 0
    assert contrastive_pick(probs, candidates, context, 0.5).tolist() == [0]  # both alike: the likelier
    assert contrastive_pick(probs, candidates, context, 0.5, torch.tensor([[True, False]])).tolist() == [0]
    assert contrastive_pick(probs, candidates, context[:, :1], 0.5).tolist() == [0]
    assert contrastive_pick(probs, candidates, context[:, 1:], 0.5).tolist() == [1]  # 0 looks like the text
