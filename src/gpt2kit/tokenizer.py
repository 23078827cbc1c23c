"""GPT-2's byte-level BPE, with tiktoken as the engine.

The ranks are built from OpenAI's own encoder.json and vocab.bpe (shipped in assets/, or the
files a model folder carries), so nothing is fetched at run time. Building them takes about 0.13 s
(parsing a 1 MB JSON file, then 50,257 tokens to bytes), a good part of every `gpt2kit generate`'s
start, so they are kept under GPT2KIT_HOME/tokenizers, keyed by the two files' bytes (0.02 s to read back).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import marshal
import sys
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Iterable, Iterator

import tiktoken

from . import durable
from .errors import UserError
from .paths import ASSETS_DIR as ASSETS
from .paths import tokenizers_dir

log = logging.getLogger("gpt2kit")
RANKS_FORMAT = 1  # of the kept ranks file: marshal of (RANKS_FORMAT, ranks, special tokens)
EOT = "<|endoftext|>"
# GPT-2's pre-tokenisation regex (OpenAI encoder.py), which tiktoken's "gpt2" encoding also uses.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=None)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@lru_cache(maxsize=None)
def _to_latin1() -> dict[int, str]:
    """str.translate's table: stand-in character -> the latin-1 character of its byte."""
    table = {c: "\uffff" for c in range(256)}  # latin-1 characters that stand in for no byte: rejected below
    table.update({ord(c): chr(b) for c, b in _byte_decoder().items()})
    return table


def _token_bytes(token: str, path: Path) -> bytes:
    raw = token.translate(_to_latin1())
    try:
        return raw.encode("latin-1")
    except UnicodeEncodeError:  # a character no byte stands for
        raise UserError(f"{path} has token {token!r}, which is not byte-level BPE; is it a GPT-2 vocabulary?") from None


def _ranks(encoder: dict[str, int], tokens: list[str], path: Path) -> dict[bytes, int]:
    """Each of `tokens` as its bytes -> its id in `encoder`."""
    try:
        # translate + latin-1 in C, and no Python call per token: 50,257 tokens in 0.02 s, not 0.2 s byte by byte
        raw = map(str.encode, map(str.translate, tokens, repeat(_to_latin1())), repeat("latin-1"))
        return dict(zip(raw, map(encoder.__getitem__, tokens)))
    except UnicodeEncodeError:  # say which token: the one _token_bytes refuses
        for token in tokens:
            _token_bytes(token, path)
        raise


def _read_vocab(encoder_path: Path, merges_path: Path) -> tuple[dict[bytes, int], dict[str, int]]:
    """encoder.json (token -> id) and vocab.bpe (merges) -> tiktoken ranks and special tokens.

    tiktoken merges by the rank of the merged bytes; GPT-2's ids are assigned in merge order, so
    the id is the rank. We check that against the merge list rather than assume it.
    """
    try:
        encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
        merges = merges_path.read_text(encoding="utf-8").split("\n")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the vocabulary {encoder_path} / {merges_path}: {e}") from None
    special = {token: i for token, i in encoder.items() if token.startswith("<|") and token.endswith("|>")}
    ranks = _ranks(encoder, [token for token in encoder if token not in special], encoder_path)
    merge_lines = (
        [m for m in merges[1:] if m.strip()]
        if merges and merges[0].startswith("#")
        else [m for m in merges if m.strip()]
    )
    for line in merge_lines[:10]:
        a, b = line.split(" ")
        if (a + b) not in encoder:
            raise UserError(
                f"{merges_path} merges {a!r}+{b!r} into a token {encoder_path} lacks; the two files do not belong together"
            )
    return ranks, special


def _kept_vocab(encoder_path: Path, merges_path: Path) -> tuple[dict[bytes, int], dict[str, int]]:
    """_read_vocab's answer, read back from GPT2KIT_HOME/tokenizers when these two files were read before."""
    try:
        content = encoder_path.read_bytes() + b"\0" + merges_path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read the vocabulary {encoder_path} / {merges_path}: {e}") from None
    # marshal's format belongs to the Python version that wrote it
    key = f"{hashlib.sha256(content).hexdigest()[:32]}-py{sys.version_info[0]}{sys.version_info[1]}"
    kept = tokenizers_dir() / f"{key}.marshal"
    try:
        version, ranks, special = marshal.loads(kept.read_bytes())
        if version == RANKS_FORMAT and isinstance(ranks, dict) and isinstance(special, dict):
            return ranks, special
    except (OSError, ValueError, EOFError, TypeError):
        pass  # not kept yet, or damaged: build it again
    ranks, special = _read_vocab(encoder_path, merges_path)
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        durable.write_bytes(kept, marshal.dumps((RANKS_FORMAT, ranks, special)))
    except OSError as e:  # a read-only home only costs building them again next time
        log.debug("could not keep the tokenizer's ranks in %s: %s", kept, e)
    return ranks, special


class Tokenizer:
    """encode/decode with GPT-2's exact ids. `eot_id` is <|endoftext|> (50256 in GPT-2)."""

    def __init__(self, encoder_path: Path, merges_path: Path, name: str = "gpt2"):
        ranks, special = _kept_vocab(Path(encoder_path), Path(merges_path))
        if EOT not in special:
            special[EOT] = len(ranks)
        self._enc = tiktoken.Encoding(
            name=f"gpt2kit-{name}-{len(ranks)}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special
        )
        self.eot_id: int = special[EOT]
        self.n_vocab: int = max(max(ranks.values()), max(special.values())) + 1
        self.source = str(Path(encoder_path).parent)

    def encode(self, text: str) -> list[int]:
        """Text -> ids; a literal <|endoftext|> becomes the special token."""
        return self._enc.encode(text, allowed_special="all")

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids; <|endoftext|> is plain text (7 tokens), as OpenAI's encoder.py treats it."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], *, special: bool = True, threads: int = 8) -> list[list[int]]:
        if special:
            return self._enc.encode_batch(texts, num_threads=threads, allowed_special="all")
        return self._enc.encode_ordinary_batch(texts, num_threads=threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; a partial UTF-8 sequence becomes U+FFFD, as OpenAI's decoder does."""
        return self._enc.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns ids arriving one by one into text pieces that never split a character."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._utf8.decode(self._tok.decode_bytes([token]))

    def push_bytes(self, data: bytes) -> str:
        return self._utf8.decode(data)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def iter_decode(tokenizer: Tokenizer, ids: Iterable[int]) -> Iterator[str]:
    dec = tokenizer.stream_decoder()
    for i in ids:
        piece = dec.push(i)
        if piece:
            yield piece
    tail = dec.flush()
    if tail:
        yield tail


@lru_cache(maxsize=None)
def gpt2_tokenizer() -> Tokenizer:
    """The official GPT-2 vocabulary shipped in the package."""
    return Tokenizer(ASSETS / "encoder.json", ASSETS / "vocab.bpe")


def tokenizer_for_folder(folder: Path) -> Tokenizer:
    """The vocabulary a model folder carries, or GPT-2's own when it carries none."""
    for enc, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if (folder / enc).is_file() and (folder / merges).is_file():
            tok = _cached_folder_tokenizer(str((folder / enc).resolve()), str((folder / merges).resolve()))
            return tok
    return gpt2_tokenizer()


@lru_cache(maxsize=16)
def _cached_folder_tokenizer(enc: str, merges: str) -> Tokenizer:
    official = gpt2_tokenizer()
    # Most folders carry a copy of GPT-2's own files: reuse the one already built.
    if (
        Path(enc).stat().st_size == (ASSETS / "encoder.json").stat().st_size
        and Path(enc).read_bytes() == (ASSETS / "encoder.json").read_bytes()
        and Path(merges).read_bytes().strip() == (ASSETS / "vocab.bpe").read_bytes().strip()
    ):
        return official
    return Tokenizer(Path(enc), Path(merges), name=Path(enc).parent.name)
