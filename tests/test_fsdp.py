"""`--fsdp`: two CPU processes on gloo shard a tiny model; checkpoints are ordinary run folders either way."""

import os
import subprocess
import sys

import pytest
from conftest import run_cli
from test_training import close, corpus, weights  # noqa: F401 (corpus is a fixture)

COMMON = [
    "--from-scratch",
    "--n-layer",
    "2",
    "--n-embd",
    "32",
    "--n-head",
    "2",
    "--n-ctx",
    "32",
    "--no-progress",
    "--device",
    "cpu",
    "--learning-rate",
    "0.003",
    "--save-every",
    "3",
]


def torchrun(*args, port: int):
    env = {**os.environ, "GPT2KIT_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            "-m",
            "gpt2kit",
            "finetune",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fsdp_matches_one_process_with_the_same_global_batch(corpus, tmp_path, dtype):
    common = ["--dataset", corpus, *COMMON, "--steps", "6", "--dtype", dtype]
    one = run_cli("finetune", *common, "--batch-size", "4", "--checkpoint-dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = torchrun(
        *common,
        "--batch-size",
        "2",
        "--fsdp",
        "--checkpoint-dir",
        tmp_path / "two",
        port={"float32": 29541, "bfloat16": 29542}[dtype],
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = weights(tmp_path / "one/run1/step-000006"), weights(tmp_path / "two/run1/step-000006")
    assert a.keys() == b.keys() and all(b[k].dtype == a[k].dtype for k in a)  # full fp32 weights, not shards
    assert close(a, b, dtype)


def test_an_fsdp_checkpoint_resumes_without_fsdp_and_the_other_way(corpus, tmp_path):
    """The optimizer state is saved in a plain run's layout: a run switches between the two and ends
    where an uninterrupted single-process run does (lost Adam moments would restart its bias
    correction and land far outside the 1e-5 tolerance)."""
    common = ["--dataset", corpus, *COMMON, "--dtype", "float32"]
    whole = run_cli("finetune", *common, "--steps", "6", "--batch-size", "4", "--checkpoint-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    reference = weights(tmp_path / "whole/run1/step-000006")

    first = torchrun(
        *common, "--steps", "3", "--batch-size", "2", "--fsdp", "--checkpoint-dir", tmp_path / "a", port=29543
    )
    assert first.returncode == 0, first.stderr[-3000:]
    rest = run_cli("finetune", *common, "--steps", "6", "--batch-size", "4", "--checkpoint-dir", tmp_path / "a")
    assert rest.returncode == 0 and "resuming" in rest.stderr, rest.stderr
    assert close(reference, weights(tmp_path / "a/run1/step-000006"), "float32")

    first = run_cli("finetune", *common, "--steps", "3", "--batch-size", "4", "--checkpoint-dir", tmp_path / "b")
    assert first.returncode == 0, first.stderr
    rest = torchrun(
        *common, "--steps", "6", "--batch-size", "2", "--fsdp", "--checkpoint-dir", tmp_path / "b", port=29544
    )
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert close(reference, weights(tmp_path / "b/run1/step-000006"), "float32")


def test_fsdp_without_torchrun_is_one_clear_line(corpus, tmp_path):
    r = run_cli("finetune", "--dataset", corpus, *COMMON, "--steps", "2", "--fsdp", "--checkpoint-dir", tmp_path)
    assert r.returncode == 2 and "torchrun" in r.stderr and "Traceback" not in r.stderr
