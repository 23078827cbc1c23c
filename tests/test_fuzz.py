"""Coverage-guided fuzzing (atheris) of the file parsers, bounded, with a fixed seed; and the crashers
it found, replayed as plain regression tests.

Each harness in tests/fuzz/ lets only UserError escape. GPT2KIT_FUZZ_RUNS (default 1500 inputs per
harness) and GPT2KIT_FUZZ_SEED (default 1) set how long and where; for a long local run:

    GPT2KIT_FUZZ_RUNS=200000 python -m pytest tests/test_fuzz.py
    # or one harness, open-ended, keeping what it learns:
    python tests/fuzz/fuzz_tf_index.py -seed=1 -max_total_time=3600 my_corpus tests/fuzz/corpus/tf_index
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
TARGETS = ["tf_index", "safetensors", "tokens"]
RUNS = int(os.environ.get("GPT2KIT_FUZZ_RUNS", "1500"))
SEED = int(os.environ.get("GPT2KIT_FUZZ_SEED", "1"))
SECONDS = int(os.environ.get("GPT2KIT_FUZZ_SECONDS", "0"))  # 0: stop after RUNS; else also after this many seconds

sys.path.insert(0, str(FUZZ))


def harness(target: str):
    return importlib.import_module(f"fuzz_{target}")


def cases(folder: str) -> list:
    return [
        pytest.param(target, path, id=f"{target}/{path.name}")
        for target in TARGETS
        for path in sorted((FUZZ / folder / target).glob("*"))
    ]


@pytest.mark.parametrize("target,path", cases("crashers"))
def test_crashers_found_by_fuzzing_now_end_in_a_user_error(target, path):
    harness(target).check(path.read_bytes())  # raised something other than UserError before the fix


@pytest.mark.parametrize("target,path", cases("corpus"))
def test_seed_corpus_loads(target, path):
    harness(target).check(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz(target, tmp_path):
    pytest.importorskip("atheris")
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    limits = [f"-runs={RUNS}", f"-seed={SEED}", "-timeout=10", "-rss_limit_mb=4096"]
    if SECONDS:
        limits.append(f"-max_total_time={SECONDS}")
    # New inputs go to the first folder (a scratch one); the committed seeds are only read.
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ / f"fuzz_{target}.py"),
            *limits,
            f"-artifact_prefix={artifacts}/",
            str(corpus),
            str(FUZZ / "corpus" / target),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1800,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    found = sorted(artifacts.iterdir())
    assert proc.returncode == 0 and not found, (
        f"the fuzzer found an input that is not a clean UserError; keep it as tests/fuzz/crashers/{target}/NAME "
        f"and fix the parser: {found}\n{proc.stderr[-4000:]}"
    )
    assert "Done" in proc.stderr, proc.stderr[-2000:]
