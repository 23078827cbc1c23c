"""The real `gpt2kit` program in a subprocess, as a user runs it."""

import json

import pytest
from conftest import FIXTURES, run_cli


def test_generate_streams_text_and_is_deterministic(hf_tiny):
    a = run_cli("generate", "Hello there", "--model", hf_tiny, "--length", "10", "--seed", "5", "--nsamples", "2")
    b = run_cli(
        "generate",
        "Hello there",
        "--model",
        hf_tiny,
        "--length",
        "10",
        "--seed",
        "5",
        "--nsamples",
        "2",
        "--batch_size",
        "2",
        "--top_k",
        "0",
    )  # the old underscore spellings work too
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    samples = a.stdout.split("=" * 20 + "\n")
    assert len(samples) == 2 and all(s.startswith("Hello there") for s in samples)


def test_generate_jsonl_labels_synthetic_text(hf_tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("First prompt\nSecond prompt\n")
    r = run_cli(
        "generate", "--model", hf_tiny, "--prompt-file", prompts, "--length", "5", "--seed", "1", "--format", "jsonl"
    )
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["prompt"] for rec in records] == ["First prompt", "Second prompt"]
    assert all(rec["synthetic"] is True and rec["text"].startswith(rec["prompt"]) for rec in records)
    assert records[0]["settings"]["length"] == 5 and isinstance(records[0]["seed"], int)


def test_prompt_from_stdin_and_jsonl_file(hf_tiny, tmp_path):
    r = run_cli("generate", "--model", hf_tiny, "--length", "4", "--seed", "1", input="Piped prompt\n")
    assert r.returncode == 0 and r.stdout.startswith("Piped prompt")
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "From JSONL"}) + "\n")
    r = run_cli("generate", "--model", hf_tiny, "--prompt-file", f, "--length", "4", "--seed", "1")
    assert r.returncode == 0 and r.stdout.startswith("From JSONL")


def test_output_dir_keeps_existing_files(hf_tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sample-0001.txt").write_text("precious")
    r = run_cli("generate", "Hi", "--model", hf_tiny, "--length", "4", "--nsamples", "2", "--output-dir", out)
    assert r.returncode == 0, r.stderr
    assert (out / "sample-0001.txt").read_text() == "precious"
    assert len(list(out.glob("sample-*.txt"))) == 3


def test_no_include_prefix_without_truncate(hf_tiny):
    r = run_cli("generate", "Hello", "--model", hf_tiny, "--length", "6", "--seed", "2", "--no-include-prefix")
    full = run_cli("generate", "Hello", "--model", hf_tiny, "--length", "6", "--seed", "2")
    assert full.stdout == "Hello" + r.stdout


def test_interactive_prints_only_new_text(hf_tiny):
    r = run_cli("interactive", "--model", hf_tiny, "--length", "5", "--seed", "1", input="Hello\n")
    assert r.returncode == 0, r.stderr
    assert "Model prompt >>> " in r.stdout and "SAMPLE 1" in r.stdout
    body = r.stdout.split("SAMPLE 1 " + "=" * 40 + "\n")[1]
    assert not body.startswith("Hello")


def test_info_and_convert(tmp_path):
    r = run_cli("info", FIXTURES / "nshepperd_run/run1")
    assert r.returncode == 0, r.stderr
    assert "tf-run" in r.stdout and "inferred" in r.stdout and "layers      2" in r.stdout
    r = run_cli("convert", FIXTURES / "openai_tiny", tmp_path / "hf")
    assert r.returncode == 0 and (tmp_path / "hf" / "model.safetensors").is_file()
    r = run_cli("info", tmp_path / "hf", "--json")
    assert json.loads(r.stdout)["format"] == "huggingface"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "/no/such/folder"], "no model folder"),
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "0"], "top_p"),
        (["--top-k", "-2"], "top_k"),
        (["--device", "tpu"], "unknown device"),
        (["--prompt-file", "/no/such/file"], "does not exist"),
    ],
)
def test_bad_input_one_line_exit_2(hf_tiny, args, message):
    if "--model" not in args:
        args = ["--model", str(hf_tiny), *args]
    r = run_cli("generate", "Hi", "--length", "2", *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_prompt_file_not_utf8(hf_tiny, tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\xe9\n".encode("latin-1"))
    r = run_cli("generate", "--model", hf_tiny, "--prompt-file", f)
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_unknown_option_exit_2():
    r = run_cli("generate", "--no-such-option")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_encode_flags_reach_the_library(tmp_path):
    from gpt2kit.data.tokens import read_tokens

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"{i}.txt").write_text(f"Document number {i}, with a few words in it.\n")
    a = run_cli("encode", docs, "-o", tmp_path / "a.tokens", "--quiet")
    b = run_cli("encode", docs, "-o", tmp_path / "b.tokens", "--quiet", "--no-eot", "--val-fraction", "0.5")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert "validation: 2 documents" in b.stdout
    held_out = read_tokens(tmp_path / "b.val.tokens").size
    assert (
        read_tokens(tmp_path / "a.tokens").size == read_tokens(tmp_path / "b.tokens").size + held_out + 4
    )  # 4 <|endoftext|>


def test_convert_dtype_flag(tmp_path):
    from safetensors import safe_open

    r = run_cli("convert", FIXTURES / "openai_tiny", tmp_path / "half", "--dtype", "float16")
    assert r.returncode == 0, r.stderr
    with safe_open(tmp_path / "half" / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
