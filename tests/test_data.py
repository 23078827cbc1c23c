"""Text extraction, encoding, the dataset formats other tools write, and bad input."""

import json

import numpy as np
import pytest
from conftest import run_cli

import gpt2kit
from gpt2kit.data.encode import decode_dataset
from gpt2kit.data.extract import html_to_text, markdown_to_text
from gpt2kit.data.tokens import read_tokens
from gpt2kit.errors import UserError
from gpt2kit.tokenizer import gpt2_tokenizer


def test_markdown_keeps_words_drops_markup():
    md = """---
title: My post
date: 2024-01-01
---
# A Heading

Some *emphasis*, **bold** and a [link text](https://example.com).

- first item
- second item

![alt words](img.png) `code` <span>inline</span>
"""
    text = markdown_to_text(md)
    assert text.splitlines()[0] == "A Heading"
    for kept in ("emphasis", "bold", "link text", "first item", "second item", "alt words", "code", "inline"):
        assert kept in text
    for gone in ("title:", "https://", "**", "#", "- first", "<span>"):
        assert gone not in text


def test_html_keeps_visible_text():
    html = (
        "<html><head><title>T</title><style>p{}</style></head><body><h1>Title</h1><p>Para &amp; <a href='x'>link</a></p>"
        "<script>var x=1;</script><ul><li>one</li><li>two</li></ul></body></html>"
    )
    text = html_to_text(html)
    assert text.split("\n")[0] == "Title"
    assert "Para & link" in text and "one" in text and "two" in text
    assert "var x" not in text and "p{}" not in text and "<" not in text


def test_encode_formats_and_decode(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Plain text file.")
    (tmp_path / "in" / "b.md").write_text("# Post\n\nHello *world*.")
    (tmp_path / "in" / "c.csv").write_text("title,body\nFirst row,x\nSecond row,y\n")
    (tmp_path / "in" / "d.jsonl").write_text(
        json.dumps({"text": "json one"}) + "\n" + json.dumps({"text": "json two"}) + "\n"
    )
    summary = gpt2kit.encode_dataset([tmp_path / "in"], tmp_path / "out.tokens", progress=False)
    assert summary["documents"] == 1 + 1 + 2 + 2
    text = "".join(decode_dataset(tmp_path / "out.tokens"))
    docs = text.split("<|endoftext|>")
    assert docs[:-1] == ["Plain text file.", "Post\n\nHello world.", "First row", "Second row", "json one", "json two"]
    tokens = read_tokens(tmp_path / "out.tokens")
    assert tokens.dtype == np.uint16 and int((np.asarray(tokens) == 50256).sum()) == 6
    # the CLI prints the same text back
    r = run_cli("decode", tmp_path / "out.tokens")
    assert r.returncode == 0 and r.stdout == text


def test_csv_column_and_no_eot(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("title,body\nFirst,alpha\nSecond,beta\n")
    gpt2kit.encode_dataset([f], tmp_path / "o.tokens", column="body", eot=False, progress=False)
    assert "".join(decode_dataset(tmp_path / "o.tokens")) == "alphabeta"
    with pytest.raises(UserError, match="no column 'nope'"):
        gpt2kit.encode_dataset([f], tmp_path / "o2.tokens", column="nope", progress=False)
    with pytest.raises(UserError, match="has 2 columns .* --column 7 is past the last"):
        gpt2kit.encode_dataset([f], tmp_path / "o2.tokens", column="7", progress=False)


def test_a_byte_order_mark_is_not_text(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark: it is not part of the first column's name (which then
    matched no --column or template field), nor of the first JSON record, nor a token of a text file."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "t.csv").write_bytes(bom + b"subreddit,title\r\naskscience,Why?\r\n")
    (tmp_path / "t.jsonl").write_bytes(bom + b'{"text": "alpha"}\n')
    (tmp_path / "t.txt").write_bytes(bom + b"beta")
    out = tmp_path / "o.tokens"
    gpt2kit.encode_dataset([tmp_path / "t.csv"], out, column="subreddit", eot=False, progress=False)
    assert "".join(decode_dataset(out)) == "askscience"
    gpt2kit.encode_dataset([tmp_path / "t.csv"], out, template="[{subreddit}] {title}", eot=False, progress=False)
    assert "".join(decode_dataset(out)) == "[askscience] Why?"
    for name, text in (("t.jsonl", "alpha"), ("t.txt", "beta")):
        gpt2kit.encode_dataset([tmp_path / name], out, eot=False, progress=False)
        assert "".join(decode_dataset(out)) == text


def test_output_and_encoding_mistakes_are_refused_before_encoding(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("")
    for args, message in (
        ([tmp_path / "outdir"], "is a folder"),
        ([tmp_path / "afile" / "x.tokens"], "is a file"),
        ([tmp_path / "o.tokens", "--encoding", "nosuch"], "unknown --encoding 'nosuch'"),
    ):
        r = run_cli("encode", tmp_path / "a.txt", "--output", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "afile", "outdir"] and not any(
        (tmp_path / "outdir").iterdir()
    )


def test_validation_split_is_by_documents(tmp_path):
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"Document number {i}. " * 20)
    s = gpt2kit.encode_dataset([tmp_path / "*.txt"], tmp_path / "d.tokens", val_fraction=0.1, progress=False)
    assert 2 <= s["val_documents"] <= 6
    train_docs = "".join(decode_dataset(tmp_path / "d.tokens")).split("<|endoftext|>")[:-1]
    val_docs = "".join(decode_dataset(tmp_path / "d.val.tokens")).split("<|endoftext|>")[:-1]
    assert len(train_docs) + len(val_docs) == 40
    assert not set(train_docs) & set(val_docs)


def test_reads_npz_and_nanogpt_bin(tmp_path):
    tok = gpt2_tokenizer()
    ids = tok.encode_ordinary("Hello world<|endoftext|>Second doc")  # nshepperd: the separator is literal text
    np.savez_compressed(tmp_path / "d.npz", np.array(ids[:5], dtype=np.int32), np.array(ids[5:], dtype=np.int32))
    assert read_tokens(tmp_path / "d.npz").tolist() == ids
    np.array(ids, dtype=np.uint16).tofile(tmp_path / "train.bin")
    assert read_tokens(tmp_path / "train.bin").tolist() == ids


def test_binary_and_wrong_encoding_are_named(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(UserError, match="bin.txt looks like a binary file"):
        gpt2kit.encode_dataset([tmp_path / "bin.txt"], tmp_path / "o.tokens", progress=False)
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    r = run_cli("encode", tmp_path / "latin.txt", "--output", tmp_path / "o.tokens")
    assert r.returncode == 2 and "latin.txt is not valid utf-8" in r.stderr and "--errors replace" in r.stderr
    r = run_cli("encode", tmp_path / "latin.txt", "--output", tmp_path / "o.tokens", "--encoding", "latin-1", "--quiet")
    assert r.returncode == 0 and "1 documents" in r.stdout


def test_empty_inputs_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="no text"):
        gpt2kit.encode_dataset([tmp_path / "empty.txt"], tmp_path / "o.tokens", eot=False, progress=False)
    assert not (tmp_path / "o.tokens").exists()


def test_old_version_dataset_says_what_to_do(tmp_path):
    f = tmp_path / "d.tokens"
    (tmp_path / "a.txt").write_text("hello")
    gpt2kit.encode_dataset([tmp_path / "a.txt"], f, progress=False)
    raw = bytearray(f.read_bytes())
    raw[8] = 9  # version 9
    f.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="version 9.*gpt2kit encode"):
        read_tokens(f)
