"""Mistakes in outputs, adapters and fine-tuning options: one line and exit code 2, before any work,
and nothing the user had is lost. Every case runs the real CLI."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file

import gpt2kit

TEXT = ("The quick brown fox jumps over the lazy dog. " * 30 + "\n") * 4
SCRATCH = [
    "--from-scratch",
    "--n-layer",
    "2",
    "--n-embd",
    "32",
    "--n-head",
    "2",
    "--n-ctx",
    "32",
    "--batch-size",
    "2",
    "--no-progress",
    "--device",
    "cpu",
]


def one_line_exit_2(r, message: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert message in r.stderr, r.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mistakes-data")
    (folder / "text.txt").write_text(TEXT)
    out = folder / "data.tokens"
    gpt2kit.encode_dataset([folder / "text.txt"], out, progress=False)
    return out


@pytest.fixture(scope="module")
def adapter(hf_tiny, corpus, tmp_path_factory) -> Path:
    """A LoRA step folder from gpt2kit's own writer (`finetune --lora-rank`), on the tiny transformers model."""
    ck = tmp_path_factory.mktemp("mistakes-lora")
    r = run_cli(
        "finetune",
        "--dataset",
        corpus,
        "--model",
        hf_tiny,
        "--lora-rank",
        "4",
        "--steps",
        "1",
        "--context-length",
        "32",
        "--no-progress",
        "--device",
        "cpu",
        "--checkpoint-dir",
        ck,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    step = ck / "run1" / "step-000001"
    assert (step / "adapter_config.json").is_file()
    return step


# --- bad output paths: convert, merge, export --------------------------------------------------------------


@pytest.mark.parametrize("command", ["convert", "merge", "export"])
@pytest.mark.parametrize(
    "out, message",
    [
        ("afile.txt", "afile.txt"),
        ("afile.txt/sub", "is a file, not a folder"),
        ("/proc/gpt2kit-out", "cannot write /proc/gpt2kit-out"),
    ],
)
def test_a_bad_output_path_is_one_line_before_the_model_loads(hf_tiny, tmp_path, command, out, message):
    """Once NotADirectoryError, FileNotFoundError or FileExistsError tracebacks, some after the model loaded."""
    (tmp_path / "afile.txt").write_text("mine")
    if command == "export":
        out = out if out != "afile.txt" else "afile.txt.gguf"
        (tmp_path / "afile.txt.gguf").write_text("mine")
        if out.startswith("/proc"):
            out += ".gguf"
        args = ["export", "bundled", out]
    elif command == "merge":  # the adapter is never read: the output is checked first
        args = ["merge", hf_tiny, tmp_path / "no-adapter-needed", out]
    else:
        args = ["convert", hf_tiny, out]
    r = run_cli(*args, cwd=tmp_path)
    one_line_exit_2(r, message)
    assert (tmp_path / "afile.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["afile.txt"] + (["afile.txt.gguf"] if command == "export" else [])
    )


@pytest.mark.parametrize("name", ["ex.gguf", "ex.onnx"])
def test_export_refuses_to_replace_an_existing_file(tmp_path, name):
    """An existing file was silently replaced while an existing folder was refused."""
    (tmp_path / name).write_text("mine")
    r = run_cli("export", "bundled", tmp_path / name)
    one_line_exit_2(r, "already exists")
    assert "delete it first" in r.stderr or "another output path" in r.stderr
    assert (tmp_path / name).read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == [name]


def test_convert_and_merge_write_into_new_nested_folders(hf_tiny, adapter, tmp_path):
    """The check refuses only what cannot be written: missing parents are still made, as before."""
    r = run_cli("convert", hf_tiny, tmp_path / "a" / "b")
    assert r.returncode == 0 and (tmp_path / "a" / "b" / "model.safetensors").is_file(), r.stderr[-2000:]
    (tmp_path / "empty").mkdir()
    r = run_cli("merge", hf_tiny, adapter, tmp_path / "empty")
    assert r.returncode == 0 and (tmp_path / "empty" / "model.safetensors").is_file(), r.stderr[-2000:]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


# --- adapter_config.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lora_alpha", "x", 'lora_alpha is "x"'),
        ("lora_alpha", float("inf"), "lora_alpha is Infinity"),
        ("lora_alpha", float("nan"), "lora_alpha is NaN"),
        ("lora_alpha", True, "lora_alpha is true"),
        ("r", 0, "r is 0"),
        ("lora_dropout", "0.1", "lora_dropout"),
        ("use_rslora", "yes", "use_rslora"),
        ("alpha_pattern", {"h.0.attn.c_attn": float("inf")}, "alpha_pattern"),
        ("alpha_pattern", {"(": 2}, "not a valid pattern"),
        ("rank_pattern", {"h.0.attn.c_attn": -1}, "rank_pattern"),
    ],
)
def test_a_bad_adapter_config_field_is_one_line_naming_the_file(hf_tiny, adapter, tmp_path, field, value, message):
    """ "lora_alpha": "x" was a TypeError traceback; Infinity merged into 2.6M non-finite weights, exit 0."""
    edited = tmp_path / "adapter"
    shutil.copytree(adapter, edited)
    cfg = json.loads((edited / "adapter_config.json").read_text())
    cfg[field] = value
    (edited / "adapter_config.json").write_text(json.dumps(cfg))  # json writes inf/nan as Infinity/NaN, as PEFT would
    r = run_cli("merge", hf_tiny, edited, tmp_path / "merged")
    one_line_exit_2(r, message)
    assert str(edited / "adapter_config.json") in r.stderr
    assert not (tmp_path / "merged").exists()
    if field == "lora_alpha":  # export --adapter and generate --adapter read it the same way
        r = run_cli("export", hf_tiny, tmp_path / "m.gguf", "--adapter", edited)
        one_line_exit_2(r, message)


def test_an_adapter_with_non_finite_weights_is_refused(hf_tiny, adapter, tmp_path):
    edited = tmp_path / "adapter"
    shutil.copytree(adapter, edited)
    tensors = load_file(edited / "adapter_model.safetensors")
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, edited / "adapter_model.safetensors")
    r = run_cli("merge", hf_tiny, edited, tmp_path / "merged")
    one_line_exit_2(r, "non-finite")
    assert not (tmp_path / "merged").exists()


def test_the_unedited_adapter_merges_into_finite_weights(hf_tiny, adapter, tmp_path):
    """The adapter the cases above edit is good: each refusal is the edit's."""
    r = run_cli("merge", hf_tiny, adapter, tmp_path / "merged")
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "merged" / "model.safetensors").values())


# --- fine-tuning options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora-rank", "4", "--lora-alpha", "inf"], "lora-alpha must be a finite number"),
        (["--lora-rank", "4", "--lora-alpha", "nan"], "lora-alpha must be a finite number"),
        (["--lora-alpha", "inf"], "lora-alpha must be a finite number"),
        (["--steps", "1", "--epochs", "1"], "not both"),
        (["--run-name", "../../escape"], "run-name must be one plain folder name"),
        (["--run-name", ""], "run-name must be one plain folder name"),
        (["--run-name", ".."], "run-name must be one plain folder name"),
        (["--run-name", "a/b"], "run-name must be one plain folder name"),
    ],
)
def test_finetune_option_mistakes_are_refused_before_work(hf_tiny, corpus, tmp_path, extra, message):
    """--lora-alpha inf trained to a NaN loss and saved it, exit 0; --run-name ../../escape wrote outside
    --checkpoint-dir, '' made checkpoint/ itself the run; --steps with --epochs took --steps silently."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    r = run_cli(
        "finetune",
        "--dataset",
        corpus,
        "--model",
        hf_tiny,
        "--steps",
        "1",
        "--context-length",
        "32",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
        cwd=work,
    )
    one_line_exit_2(r, message)
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and [p.name for p in work.iterdir()] == []


def test_restoring_the_runs_newest_step_into_the_run_resumes_it(corpus, tmp_path):
    """`--restore-from checkpoint/r1/step-000001 --run-name r1` was refused ("later steps would be
    overwritten") though no later step existed; it continues the run exactly as --restore-from latest does,
    and a step that really has later ones is still refused."""
    ck = tmp_path / "ck"
    base = ["finetune", "--dataset", corpus, *SCRATCH, "--checkpoint-dir", ck]
    assert run_cli(*base, "--steps", "2", "--run-name", "straight").returncode == 0
    assert run_cli(*base, "--steps", "1", "--run-name", "r1").returncode == 0
    r = run_cli(*base, "--steps", "2", "--run-name", "r1", "--restore-from", ck / "r1" / "step-000001")
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr[-2000:]
    a, b = load_file(ck / "straight/step-000002/model.safetensors"), load_file(ck / "r1/step-000002/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r = run_cli(*base, "--steps", "3", "--run-name", "r1", "--restore-from", ck / "r1" / "step-000001", "--overwrite")
    one_line_exit_2(r, "step-000002")
    assert sorted(p.name for p in (ck / "r1").glob("step-*")) == ["step-000001", "step-000002"]
    r = run_cli(*base, "--steps", "3", "--run-name", "r1", "--restore-from", ck / "r1")  # the run folder: its newest
    assert r.returncode == 0 and (ck / "r1" / "step-000003").is_dir(), r.stderr[-2000:]
