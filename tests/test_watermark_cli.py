"""The watermark (issue 31) from `gpt2kit generate --watermark-key` and LM.generate, found by `gpt2kit detect`."""

import pytest
from conftest import run_cli

import gpt2kit

FAST = ("--device", "cpu", "--dtype", "float32")
KEY = 15485863  # transformers' own default key


def test_generated_with_a_key_detect_says_watermarked_and_unmarked_text_not(tmp_path):
    args = ("ROMEO.", "--length", 200, "--seed", 9, "--temperature", 1.0, "--no-include-prefix", *FAST)
    r = run_cli("generate", *args, "--watermark-key", KEY, "--watermark-delta", 4.0)
    assert r.returncode == 0, r.stderr
    (tmp_path / "marked.txt").write_text(r.stdout)
    r = run_cli("generate", *args)
    assert r.returncode == 0, r.stderr
    (tmp_path / "plain.txt").write_text(r.stdout)
    r = run_cli("detect", tmp_path / "marked.txt", "--watermark-key", KEY)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("detect", tmp_path / "plain.txt", "--watermark-key", KEY)
    assert r.returncode == 1, r.stdout + r.stderr


def test_lm_generate_takes_the_watermark_options():
    lm = gpt2kit.load(None, device="cpu", dtype="float32")
    plain = lm.generate("ROMEO.", length=30, seed=1)
    marked = lm.generate(
        "ROMEO.",
        length=30,
        seed=1,
        watermark_key=KEY,
        watermark_gamma=0.5,
        watermark_delta=5.0,
        watermark_context_width=1,
    )
    assert marked != plain


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--watermark-key", "0"], "watermark_key must be"),
        (["--watermark-key", "1", "--watermark-gamma", "1.5"], "watermark_gamma"),
    ],
)
def test_a_bad_watermark_value_is_one_line_and_exit_2(args, needle):
    r = run_cli("generate", "Hi", *args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
