"""The samplers of issue 29 through their front ends: `gpt2kit generate`/`interactive` flags, LM.generate,
`gpt2kit info`, and training-time samples; a seed's text whatever shares its batch, with them in use."""

import json

import pytest
from conftest import run_cli

import gpt2kit
from gpt2kit.engine import Engine
from gpt2kit.generation import make_sequences
from gpt2kit.options import GenerateOptions, SamplingSettings
from gpt2kit.samplers.help import HELP
from gpt2kit.sequence import Request
from gpt2kit.training.options import TrainOptions

# Each sampler at a setting strong enough to change the bundled model's text, with the settings that tune it.
# DRY is tried greedy, where the bundled model loops; the others at temperature 1, where truncation matters.
STRONG = {
    "min_p": {"min_p": 0.3},
    "typical_p": {"typical_p": 0.2},
    "epsilon_cutoff": {"epsilon_cutoff": 0.05},
    "eta_cutoff": {"eta_cutoff": 0.05},
    "top_n_sigma": {"top_n_sigma": 0.5},
    "mirostat": {"mirostat": 2, "mirostat_tau": 2.0, "mirostat_eta": 0.3},
    "dry": {
        "dry_multiplier": 2.0,
        "dry_base": 2.0,
        "dry_allowed_length": 1,
        "dry_penalty_last_n": 64,
        "dry_sequence_breakers": ("\n", ";"),
        "temperature": 0,
    },
    "xtc": {"xtc_threshold": 0.05, "xtc_probability": 1.0},
    "contrastive": {"penalty_alpha": 0.6, "top_k": 4},
}
PROMPT, SEED, LENGTH = "KING HENRY.", 7, 16
FAST = ("--device", "cpu", "--dtype", "float32")  # no --dtype auto measurement in each subprocess


@pytest.fixture(scope="module")
def lm():
    return gpt2kit.load(None, device="cpu", dtype="float32")


def test_every_sampler_option_is_tried_here():
    tried = {name for settings in STRONG.values() for name in settings} - {"temperature", "top_k"}
    assert tried == set(GenerateOptions.SAMPLERS)


@pytest.mark.parametrize("sampler", sorted(STRONG))
def test_each_sampler_changes_lm_generate(lm, sampler):
    settings = STRONG[sampler]
    base = {"temperature": settings.get("temperature", 1.0)}
    plain = lm.generate(PROMPT, length=LENGTH, seed=SEED, nsamples=2, batch_size=2, **base)
    texts = lm.generate(PROMPT, length=LENGTH, seed=SEED, nsamples=2, batch_size=2, **settings)
    assert texts != plain, f"{sampler} changed nothing"


def _flags(settings: dict) -> list[str]:
    out = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        for v in value if isinstance(value, tuple) else [value]:
            out += [flag, str(v)]
    return out


@pytest.mark.parametrize(
    "group", [["min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_n_sigma", "xtc"], ["mirostat", "dry"]]
)
def test_the_cli_flags_give_what_lm_generate_gives(lm, group):
    settings = {k: v for name in group for k, v in STRONG[name].items()}
    r = run_cli(
        "generate",
        PROMPT,
        "--length",
        LENGTH,
        "--seed",
        SEED,
        "--nsamples",
        2,
        "--batch-size",
        2,
        "--format",
        "jsonl",
        *FAST,
        *_flags(settings),
    )
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["text"] for rec in records] == lm.generate(PROMPT, length=LENGTH, seed=SEED, nsamples=2, **settings)
    recorded = records[0]["settings"]
    for name, value in settings.items():
        assert recorded[name] == (list(value) if isinstance(value, tuple) else value), name


def test_interactive_takes_the_sampler_flags(lm):
    r = run_cli(
        "interactive",
        "--length",
        20,
        "--seed",
        SEED,
        "--min-p",
        0.3,
        "--dry-multiplier",
        1.0,
        *FAST,
        input=PROMPT + "\n",
    )
    assert r.returncode == 0, r.stderr
    expected = lm.generate(PROMPT, length=20, seed=SEED, min_p=0.3, dry_multiplier=1.0, include_prefix=False)[0]
    assert expected in r.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--min-p", "2"], "min_p must be between 0 and 1"),
        (["--mirostat", "1"], "mirostat must be 0 (off) or 2"),
        (["--dry-base", "0.5"], "dry_base must be 1 or more"),
        (["--top-n-sigma", "inf"], "top_n_sigma must be a finite"),
        (["--xtc-probability", "abc"], "invalid float value"),
    ],
)
def test_a_bad_sampler_value_is_one_line_and_exit_2(args, needle):
    r = run_cli("generate", "Hi", *args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_contrastive_search_is_an_option_everywhere_the_others_are(lm_tiny):
    """penalty_alpha with top_k: LM.generate takes it, the search differs from greedy, and generate --help lists it."""
    kw = dict(length=12, top_k=4, include_prefix=False, stop_at_eot=False)
    searched = lm_tiny.generate("The cat sat on the mat. The cat", penalty_alpha=0.6, **kw)
    assert searched != lm_tiny.generate("The cat sat on the mat. The cat", temperature=0, **kw)
    r = run_cli("generate", "--help")
    assert r.returncode == 0
    for name in GenerateOptions.SAMPLERS:
        assert "--" + name.replace("_", "-") in r.stdout


def test_info_lists_each_sampler_with_its_line():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    for name in GenerateOptions.SAMPLERS:
        assert f"{name} " in r.stdout and HELP[name] in r.stdout, name


# --- the seed contract with the new samplers, and constrained and watermarked rows, in one batch ----------

ROWS = [  # each row's own options; they share one engine
    GenerateOptions(min_p=0.1, typical_p=0.9),
    GenerateOptions(mirostat=2, mirostat_tau=3.0),
    GenerateOptions(dry_multiplier=0.8, xtc_threshold=0.1, xtc_probability=0.5),
    GenerateOptions(top_n_sigma=1.0, eta_cutoff=0.01, epsilon_cutoff=0.001),
    GenerateOptions(regex="[A-Z][a-z]+( [a-z]+)*\\."),
    GenerateOptions(watermark_key=42, min_p=0.05),
    GenerateOptions(choices=("Yes", "No", "Perhaps")),
    GenerateOptions(),
]


def test_a_seed_gives_the_same_text_whatever_the_batch(lm):
    for options in ROWS[:4]:
        alone = lm.generate(PROMPT, options, length=12, seed=SEED, nsamples=4, batch_size=1)
        assert lm.generate(PROMPT, options, length=12, seed=SEED, nsamples=4, batch_size=4) == alone
    alone = [lm.generate(PROMPT, options, length=12, seed=SEED + i)[0] for i, options in enumerate(ROWS)]
    engine = Engine(lm.model, lm.tokenizer, max_rows=len(ROWS))
    seqs = [
        s
        for i, options in enumerate(ROWS)
        for s in make_sequences(
            [PROMPT],
            [lm.tokenizer.encode(PROMPT)],
            per_prompt=1,
            seed=SEED + i,
            settings=options.sampling(),
            max_new=12,
            stops=[],
            include_prefix=True,
            stop_at_eot=True,
            logprobs=0,
            index_base=i,
        )
    ]
    request = Request(seqs)
    engine.add(request)
    while not engine.idle:
        engine.step()
    assert [s.sample.text for s in seqs] == alone


# --- training-time samples -------------------------------------------------------------------------------


def test_training_samples_take_every_sampler():
    names = {f"sample_{n}" for n in GenerateOptions.SAMPLERS}
    options = TrainOptions(
        sample_min_p=0.2,
        sample_dry_multiplier=0.8,
        sample_dry_sequence_breakers=["\n"],
        sample_mirostat=2,
        sample_temperature=0.7,
    )
    assert names <= set(TrainOptions.__dataclass_fields__)
    assert options.sampling() == SamplingSettings(
        min_p=0.2,
        dry_multiplier=0.8,
        dry_sequence_breakers=("\n",),
        mirostat=2,
        temperature=0.7,
        top_k=TrainOptions.sample_top_k,
    )
    r = run_cli("finetune", "--dataset", "none.tokens", "--sample-xtc-probability", "1.5")
    assert r.returncode == 2 and "in the training samples' settings: xtc_probability" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
