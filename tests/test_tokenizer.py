"""Token ids against transformers' GPT2Tokenizer (Hugging Face tokenizers, a BPE engine independent of tiktoken)."""

import marshal

import pytest

from gpt2kit.tokenizer import ASSETS, RANKS_FORMAT, Tokenizer, _read_vocab, gpt2_tokenizer

NASTY = [
    "Hello, world!",
    "I'm here; they'll go, we've gone, she'd say, it's OK. DON'T SHOUT",
    "   leading spaces and trailing   ",
    "tabs\tand\r\nCRLF\r\nline\n\n\nendings\n",
    "emoji 🤖🎉👩‍👩‍👧 and flags 🇫🇷",
    "unicode: naïve café Ωμέγα Привет 日本語 한국어 عربى",
    "control \x00\x01\x07 chars \u200b zero-width",
    "numbers 1234567890 3.14159 1e-10 ½",
    " " * 40 + "x" + "\n" * 7,
    "a" * 300,
    "mixed<|endoftext|>literal",
    "\u00a0non-breaking\u2028line-sep",
]


@pytest.fixture(scope="module")
def reference():
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer(str(ASSETS / "encoder.json"), str(ASSETS / "vocab.bpe"))


@pytest.mark.parametrize("text", NASTY)
def test_ids_match_openai_encoder(reference, text):
    tok = gpt2_tokenizer()
    # transformers maps a literal <|endoftext|> to the special token, as our encode does;
    # OpenAI's encoder.py treats it as plain text, as our encode_ordinary does.
    assert tok.encode(text) == reference.encode(text)
    assert tok.encode_ordinary(text) == reference(text, split_special_tokens=True)["input_ids"]
    assert tok.decode(tok.encode_ordinary(text)) == text


def test_special_token():
    tok = gpt2_tokenizer()
    assert tok.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert tok.encode_ordinary("<|endoftext|>") != [50256]
    assert len(tok.encode_ordinary("<|endoftext|>")) == 7
    assert tok.eot_id == 50256 and tok.n_vocab == 50257


def test_partial_utf8_decodes_with_replacement():
    tok = gpt2_tokenizer()
    ids = tok.encode("🤖")
    assert len(ids) > 1  # a 4-byte character spans several tokens
    assert tok.decode(ids[:1]) == "\ufffd" or "\ufffd" in tok.decode(ids[:1])
    assert tok.decode(ids) == "🤖"


def test_stream_decoder_never_splits_characters():
    tok = gpt2_tokenizer()
    text = "naïve 🤖 日本語 done"
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in tok.encode(text)] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_a_vocabulary_read_once_is_read_back_from_the_home(tmp_path, monkeypatch, reference):
    """Building tiktoken's ranks from encoder.json and vocab.bpe is kept under GPT2KIT_HOME by the files'
    content: a second load reads that file; a damaged one is built again; the ids stay the reference's."""
    monkeypatch.setenv("GPT2KIT_HOME", str(tmp_path))
    first = Tokenizer(ASSETS / "encoder.json", ASSETS / "vocab.bpe")
    [kept] = (tmp_path / "tokenizers").iterdir()
    _, ranks, special = marshal.loads(kept.read_bytes())
    assert ranks == _read_vocab(ASSETS / "encoder.json", ASSETS / "vocab.bpe")[0]
    # What is kept is what a second load uses: a kept file that maps "Hello" elsewhere shows it is read.
    hello = first.encode("Hello")
    assert len(hello) == 1
    swapped = {**ranks, b"Hello": ranks[b" the"], b" the": ranks[b"Hello"]}
    kept.write_bytes(marshal.dumps((RANKS_FORMAT, swapped, special)))
    assert Tokenizer(ASSETS / "encoder.json", ASSETS / "vocab.bpe").encode("Hello") == [ranks[b" the"]]
    kept.write_bytes(b"\x00damaged")
    again = Tokenizer(ASSETS / "encoder.json", ASSETS / "vocab.bpe")
    assert again.encode(NASTY[1]) == reference.encode(NASTY[1]) and marshal.loads(kept.read_bytes())[1] == ranks
