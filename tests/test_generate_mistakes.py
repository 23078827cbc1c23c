"""`gpt2kit generate`'s answers to a user's mistakes: one line, exit code 2, nothing of theirs lost,
and nothing loaded or opened before the mistake is found."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli

from gpt2kit.options import GenerateOptions, LoadOptions

NO_MODEL = "/no/such/model"  # the load would fail on it: an error about anything else came before the load
DELIM = "=" * 20 + "\n"


def one_error_line(r, message: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("gpt2kit: error: "), r.stderr
    assert message in r.stderr, r.stderr


@pytest.mark.parametrize(
    "flag,where,message",
    [
        ("--output", "folder", "is a folder"),
        ("--output", "afile.txt/x", "is a file, not a folder"),
        ("--output", "/proc/nope/x", "cannot write in /proc/nope"),
        ("--output-dir", "afile.txt", "is a file, not a folder"),
        ("--output-dir", "/proc/nope", "cannot write in /proc/nope"),
    ],
)
def test_bad_output_place_is_refused_before_the_model_loads(tmp_path, flag, where, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile.txt").write_text("precious")
    r = run_cli("generate", "Hi", "--model", NO_MODEL, flag, where, cwd=tmp_path)
    one_error_line(r, message)
    assert (tmp_path / "afile.txt").read_text() == "precious"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_disk_full_mid_write_is_one_line(hf_tiny):
    """A device is written in place (it cannot be replaced): the error comes mid-run, after the load's notes."""
    r = run_cli(
        "generate",
        "Hi",
        "--model",
        hf_tiny,
        "--dtype",
        "float32",
        "--length",
        "4",
        "--seed",
        "1",
        "--output",
        "/dev/full",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("gpt2kit: error: no space left while writing /dev/full")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_standard_output_on_a_full_disk_is_one_line(hf_tiny):
    """`generate > FILE` on a full disk: the shell opened the file, so only the write can fail."""
    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpt2kit",
                "generate",
                "Hi",
                "--model",
                str(hf_tiny),
                "--dtype",
                "float32",
                "--length",
                "4",
                "--seed",
                "1",
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "GPT2KIT_OFFLINE": "1"},
            timeout=300,
        )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("gpt2kit: error: no space left while writing standard output")


@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="needs /dev/stdout")
def test_output_dev_stdout_writes_through_to_the_redirected_file(hf_tiny, tmp_path):
    """`--output /dev/stdout >> log`: /dev/stdout leads to log itself, which must be written through,
    never replaced by a new file (that would lose what >> kept)."""
    log = tmp_path / "log.txt"
    log.write_text("kept from before\n")
    with open(log, "a") as appended:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpt2kit",
                "generate",
                "Hi",
                "--model",
                str(hf_tiny),
                "--dtype",
                "float32",
                "--length",
                "3",
                "--seed",
                "1",
                "--output",
                "/dev/stdout",
            ],
            stdout=appended,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "GPT2KIT_OFFLINE": "1"},
            timeout=300,
        )
    assert r.returncode == 0, r.stderr
    text = log.read_text()
    assert text.startswith("kept from before\nHi"), text
    assert list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.parametrize(
    "args,message,untouched",
    [
        (["--output", "o.txt", "--output-dir", "od"], "pass one of them", "od"),
        (["--format", "jsonl", "--output-dir", "od2"], "--output FILE.jsonl", "od2"),
    ],
)
def test_conflicting_outputs_are_refused_before_anything_opens(tmp_path, args, message, untouched):
    (tmp_path / "o.txt").write_text("precious")
    r = run_cli("generate", "Hi", "--model", NO_MODEL, *args, cwd=tmp_path)
    one_error_line(r, message)
    assert (tmp_path / "o.txt").read_text() == "precious" and not (tmp_path / untouched).exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--length", "-1"], "length must be 0 or more"),
        (["--repetition-penalty", "0"], "repetition_penalty"),
        (["--top-k", "-5"], "top_k"),
        (["--batch-size", "0"], "batch_size"),
        (["--nsamples", "-1"], "nsamples"),
    ],
)
def test_bad_sampling_option_is_the_only_line_and_keeps_the_output_file(tmp_path, args, message):
    """No --model: the bundled model's notice (and a first load's timing lines) would come first."""
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    r = run_cli("generate", "Hi", "--output", keep, *args)
    one_error_line(r, message)
    assert keep.read_text() == "precious"


def test_interactive_checks_options_before_the_load():
    one_error_line(run_cli("interactive", "--top-p", "0"), "top_p")


def test_fields_file_not_utf8(tmp_path):
    fields = tmp_path / "fields.jsonl"
    fields.write_bytes('{"title": "caf\xe9"}\n'.encode("latin-1"))
    r = run_cli("generate", "--model", NO_MODEL, "--template", "[{title}]", "--fields", fields)
    one_error_line(r, "is not UTF-8 text")


@pytest.mark.parametrize("flag", ["--prompt-file", "--fields"])
def test_a_folder_given_as_an_input_file_is_called_a_folder(tmp_path, flag):
    extra = ["--template", "[{title}]"] if flag == "--fields" else []
    r = run_cli("generate", "--model", NO_MODEL, *extra, flag, tmp_path)
    one_error_line(r, f"{tmp_path} is a folder")


def test_stdin_not_utf8_is_refused_like_prompt_file_dash(hf_tiny):
    """Under a UTF-8 locale Python's stdin lets bad bytes through as mojibake; --prompt-file - refuses them."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "PYTHONUTF8")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", GPT2KIT_OFFLINE="1")
    base = [sys.executable, "-m", "gpt2kit", "generate", "--model", str(hf_tiny), "--length", "2"]
    for extra in ([], ["--prompt-file", "-"]):  # bytes in: run_cli's text mode cannot send invalid UTF-8
        r = subprocess.run(base + extra, input="caf\xe9\n".encode("latin-1"), capture_output=True, env=env, timeout=300)
        assert r.returncode == 2 and b"standard input is not UTF-8" in r.stderr and b"Traceback" not in r.stderr, (
            r.stderr
        )


def test_a_subcommands_usage_error_points_at_its_own_help():
    r = run_cli("generate", "--bogus")
    one_error_line(r, "unrecognized arguments: --bogus (see `gpt2kit generate --help`)")
    one_error_line(run_cli("generate", "--length", "x"), "(see `gpt2kit generate --help`)")


def test_help_shows_the_documented_defaults_and_an_example():
    r = run_cli("generate", "--help")
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stdout.split())  # argparse wraps the help
    assert GenerateOptions.seed is None and "batch size (default random)" in flat
    assert f"then cpu) (default {LoadOptions.device})" in flat
    assert f"keeps fp32's answers) (default {LoadOptions.dtype})" in flat
    assert "\nexample:\n  gpt2kit generate " in r.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_a_run_into_a_file_keeps_the_finished_samples(hf_tiny, tmp_path, sig):
    """--output is written under a temporary name and replaces the file at the end, also when the user
    ends a --nsamples 0 run (Ctrl-C, or SIGTERM from `timeout`)."""
    out = tmp_path / "run.txt"
    old = "the file before this run\n"  # a whole line no sample writes ("old" alone is in "unfolded")
    out.write_text(old)
    env = {**os.environ, "GPT2KIT_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpt2kit",
            "generate",
            "Hi",
            "--model",
            str(hf_tiny),
            "--length",
            "3",
            "--nsamples",
            "0",
            "--output",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # as a terminal has it
    try:
        deadline = time.monotonic() + 240
        while not any(DELIM in p.read_text() for p in tmp_path.glob(".run.txt.*.tmp")):  # a second sample began
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        assert out.read_text() == old  # streamed to the temporary file, not over the old one
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 130, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert text.startswith("Hi") and DELIM in text and old not in text
    assert list(tmp_path.glob(".*.tmp")) == []
