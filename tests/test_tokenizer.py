"""Token ids against transformers' GPT2Tokenizer (Hugging Face tokenizers, a BPE engine independent of tiktoken)."""
import pytest

from gpt2kit.tokenizer import ASSETS, gpt2_tokenizer

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
