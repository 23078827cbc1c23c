"""Users' mistakes with datasets, text files and offline downloads: one line, exit code 2, and what to do.

Valid datasets are written by gpt2kit's own writer, broken ones as raw bytes; every command is the real CLI.
"""

import os
import zipfile

import numpy as np
import pytest
from conftest import run_cli

import gpt2kit
from gpt2kit.data.encode import decode_dataset
from gpt2kit.data.tokens import TokenWriter, read_tokens

CPU = ("--device", "cpu", "--dtype", "float32")


def one_line_error(r) -> str:
    """The CLI's answer to a user's mistake: exit code 2 and a single line on stderr, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and r.stderr.startswith("gpt2kit: error: "), (
        r.stderr
    )
    return r.stderr


def dataset(path, ids, n_vocab=50257):
    w = TokenWriter(path, n_vocab)
    w.write(ids)
    w.close()
    return path


# --- token ids outside the vocabulary (item 5) -----------------------------------------------------------


def test_ids_past_the_vocabulary_are_named_by_perplexity_and_decode(hf_tiny, tmp_path):
    big = dataset(tmp_path / "big.tokens", [1, 2, 60000, 3], n_vocab=65536)  # encoded for a larger vocabulary
    np.array([5, 60000, 7], dtype="<u2").tofile(tmp_path / "big.bin")  # nanoGPT's headerless uint16
    for path in (big, tmp_path / "big.bin"):
        for args in (("perplexity", path, "--model", hf_tiny, *CPU), ("decode", path)):
            err = one_line_error(run_cli(*args))
            assert str(path) in err and "60000" in err and "50,257" in err, err
    # every file is read and checked before any is scored: no result for the good file first
    good = dataset(tmp_path / "good.tokens", [1, 2, 3])
    r = run_cli("perplexity", good, big, "--model", hf_tiny, *CPU)
    assert r.stdout == "" and "60000" in one_line_error(r)


# --- encode -o: what may be replaced (item 16) ------------------------------------------------------------


def test_encode_never_replaces_a_file_that_is_not_its_dataset(tmp_path):
    (tmp_path / "a.txt").write_text("Some text to encode.\n")
    notes = tmp_path / "notes.tokens"
    notes.write_text("my notes, not a dataset")
    err = one_line_error(run_cli("encode", tmp_path / "a.txt", "-o", notes, "--quiet"))
    assert "not a gpt2kit token dataset" in err and "another path" in err and "delete" in err, err
    assert notes.read_text() == "my notes, not a dataset"
    fifo = tmp_path / "pipe.tokens"
    os.mkfifo(fifo)  # stands for a device node such as /dev/full, which was once replaced by a regular file
    err = one_line_error(run_cli("encode", tmp_path / "a.txt", "-o", fifo, "--quiet"))
    assert "not a regular file" in err and fifo.is_fifo(), err
    (tmp_path / "d.val.tokens").write_text("precious")  # --val-fraction writes here too
    err = one_line_error(
        run_cli("encode", tmp_path / "a.txt", "-o", tmp_path / "d.tokens", "--val-fraction", "0.5", "--quiet")
    )
    assert "d.val.tokens" in err and (tmp_path / "d.val.tokens").read_text() == "precious"
    assert not (tmp_path / "d.tokens").exists() and not list(tmp_path.glob(".*tmp"))


def test_encode_replaces_its_own_dataset(tmp_path):
    (tmp_path / "a.txt").write_text("Some text to encode.\n")
    out = dataset(tmp_path / "d.tokens", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])  # an earlier encoding
    r = run_cli("encode", tmp_path / "a.txt", "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "".join(decode_dataset(out)) == "Some text to encode.\n<|endoftext|>"


# --- --val-fraction that takes every document (item 20) ---------------------------------------------------


@pytest.mark.parametrize("fraction", ["0.5", "0.99"])
def test_a_val_fraction_that_takes_every_document_says_so(tmp_path, fraction):
    (tmp_path / "one.txt").write_text("The only document there is.\n")
    err = one_line_error(
        run_cli("encode", tmp_path / "one.txt", "-o", tmp_path / "d.tokens", "--val-fraction", fraction, "--quiet")
    )
    assert "went to validation" in err and "smaller --val-fraction" in err and "--val-fraction 0" in err, err
    assert "no text to train on" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.txt"]


# --- perplexity reads text as encode does (item 19) -------------------------------------------------------


def test_perplexity_takes_encode_s_encoding_and_errors(hf_tiny, lm_tiny, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Un caf\xe9 cr\xe8me, s'il vous pla\xeet.\n".encode("latin-1"))
    err = one_line_error(run_cli("perplexity", latin, "--model", hf_tiny, *CPU))
    assert "--encoding" in err and "--errors replace" in err, err
    for flags in (("--encoding", "latin-1"), ("--errors", "replace")):
        r = run_cli("perplexity", latin, "--model", hf_tiny, *CPU, *flags)
        assert r.returncode == 0, r.stderr
        expected = gpt2kit.perplexity(lm_tiny, latin, **{flags[0][2:]: flags[1]})
        assert r.stdout.startswith(f"{latin}: {expected.tokens:,} tokens, loss {expected.loss:.4f}"), r.stdout
    # the same text, encoded by `encode --encoding latin-1`, scores the same
    gpt2kit.encode_dataset([latin], tmp_path / "l.tokens", encoding="latin-1", progress=False)
    assert gpt2kit.perplexity(lm_tiny, tmp_path / "l.tokens").loss == pytest.approx(
        gpt2kit.perplexity(lm_tiny, latin, encoding="latin-1").loss, rel=1e-6
    )


def test_perplexity_of_too_little_text_says_what_to_do(hf_tiny, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    err = one_line_error(run_cli("perplexity", tmp_path / "empty.txt", "--model", hf_tiny, *CPU))
    assert "at least 2" in err and "some text" in err, err
    one = dataset(tmp_path / "one.tokens", [464])
    err = one_line_error(run_cli("perplexity", one, "--model", hf_tiny, *CPU))
    assert "at least 2" in err and "encode more text" in err, err


# --- folders where a file is expected (item 21) -----------------------------------------------------------


def test_a_folder_is_described_not_called_missing(tmp_path):
    empty = tmp_path / "emptydir"
    empty.mkdir()
    err = one_line_error(run_cli("perplexity", empty))  # the bundled model: refused before it loads
    assert "is a folder" in err and "empty" in err and "text files or token datasets" in err, err
    assert "does not exist" not in err
    err = one_line_error(run_cli("decode", empty))
    assert "is a folder" in err and "empty" in err and "gpt2kit encode" in err and "does not exist" not in err, err
    dataset(empty / "posts.tokens", [1, 2])
    err = one_line_error(run_cli("decode", empty))
    assert f"such as {empty / 'posts.tokens'}" in err, err
    err = one_line_error(run_cli("perplexity", empty))
    assert "posts.tokens" in err and str(empty / "*") in err, err


# --- .npz files that are not (item 24) --------------------------------------------------------------------


def test_broken_npz_files_get_a_whole_accurate_line(tmp_path):
    np.save(tmp_path / "arr.npy", np.arange(5))
    good = tmp_path / "good.npz"
    np.savez_compressed(good, np.arange(2000) % 50257)
    raw = good.read_bytes()
    cases = {
        "text.npz": (b"this is text, not an archive of arrays\n", "not a zip archive"),
        "empty.npz": (b"", "empty"),
        "single.npz": ((tmp_path / "arr.npy").read_bytes(), "single NumPy .npy array"),
        "truncated.npz": (raw[: len(raw) // 2], "truncated or damaged"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        err = one_line_error(run_cli("decode", tmp_path / name))
        assert reason in err and "pickle" not in err and err.rstrip().endswith("encode the text again"), err
    with zipfile.ZipFile(tmp_path / "member.npz", "w") as z:
        z.writestr("notes.txt", "not an array")
    err = one_line_error(run_cli("decode", tmp_path / "member.npz"))
    assert "'notes.txt' is not a NumPy array" in err, err
    np.savez(tmp_path / "objects.npz", np.array([{"a": 1}], dtype=object))
    err = one_line_error(run_cli("decode", tmp_path / "objects.npz"))
    assert "pickled Python objects" in err, err
    assert read_tokens(good).tolist() == (np.arange(2000) % 50257).tolist()


# --- download --offline says what to run (item 22) --------------------------------------------------------


@pytest.mark.parametrize("name", ["124M", "someone/gpt2-tolkien@v2"])
def test_offline_download_says_what_to_run(tmp_path, name):
    err = one_line_error(run_cli("download", name, "--offline", env={"GPT2KIT_OFFLINE": ""}))
    assert "downloads are off" in err and f"run `gpt2kit download {name}` without --offline," in err, err
    err = one_line_error(run_cli("download", name))  # run_cli sets GPT2KIT_OFFLINE=1
    assert f"run `gpt2kit download {name}` with GPT2KIT_OFFLINE unset," in err, err
    err = one_line_error(run_cli("download", name, "--offline", "--models-dir", tmp_path / "my models"))
    assert (
        f"`gpt2kit download {name} --models-dir '{tmp_path / 'my models'}'` without --offline and with "
        f"GPT2KIT_OFFLINE unset" in err
    ), err
    err = one_line_error(run_cli("generate", "hi", "--model", name, "--offline"))
    assert f"run `gpt2kit download {name}` with GPT2KIT_OFFLINE unset" in err, err
