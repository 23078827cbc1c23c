"""Token datasets on disk: gpt2kit's own format, and the ones other tools write.

gpt2kit format (version 1), little-endian:
    bytes 0-7    magic b"GPT2KTOK"
    bytes 8-11   uint32 version (1)
    bytes 12-15  uint32 bytes per token (2: uint16, 4: uint32 for vocabularies over 65,536)
    bytes 16-23  uint64 number of tokens
    bytes 24-27  uint32 vocabulary size
    bytes 28-35  uint64 number of documents
    bytes 36-63  zero
followed by the tokens. Read by memory-mapping, so a corpus larger than RAM trains as it is.
Also read: nshepperd / gpt-2-simple .npz (np.savez_compressed of 1-D integer arrays) and
nanoGPT's headerless uint16 .bin.
"""
from __future__ import annotations

import contextlib
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import durable
from ..errors import UserError

MAGIC = b"GPT2KTOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQIQ28x")  # 64 bytes


def token_dtype(n_vocab: int) -> np.dtype:
    return np.dtype("<u2") if n_vocab <= 65536 else np.dtype("<u4")


class TokenWriter:
    """Appends token arrays to a file under a temporary name; `close` writes the header, fsyncs and renames
    (durable.py), so the dataset is whole or absent even after a power cut. A full or read-only disk is a
    UserError."""

    def __init__(self, path: Path, n_vocab: int):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.dtype = token_dtype(n_vocab)
        self.n_vocab = n_vocab
        self.n_tokens = 0
        self.n_docs = 0
        with self._disk_errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.tmp, "wb")
            self.f.write(b"\0" * HEADER.size)

    def write(self, tokens: np.ndarray | list[int], docs: int = 1) -> None:
        arr = np.asarray(tokens, dtype=self.dtype)
        with self._disk_errors():
            self.f.write(arr.tobytes())
        self.n_tokens += arr.size
        self.n_docs += docs

    def close(self) -> None:
        with self._disk_errors():
            self.f.seek(0)
            self.f.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.n_tokens, self.n_vocab, self.n_docs))
            self.f.close()
            durable.replace(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            self.f.close()
        self.tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _disk_errors(self):
        try:
            yield
        except OSError as e:
            error = durable.user_error_for(e, self.path)
            if error is None:
                raise
            raise error from None


def is_token_file(path: Path) -> bool:
    """True for files `read_tokens` reads (ours, .npz, nanoGPT .bin) rather than text to encode."""
    if path.suffix in (".npz", ".bin"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(8) == MAGIC
    except OSError:
        return False


def read_tokens(path: str | Path) -> np.ndarray:
    """Any token dataset -> a 1-D integer array (memory-mapped where the format allows)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset {path} does not exist; make one with `gpt2kit encode TEXT... --output {path}`")
    if path.suffix == ".npz":
        return _read_npz(path)
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
    if head[:8] == MAGIC:
        if len(head) < HEADER.size:
            raise UserError(f"{path} is truncated: its {len(head)} bytes do not hold a gpt2kit dataset header; encode it again")
        magic, version, width, n_tokens, n_vocab, n_docs = HEADER.unpack(head)
        if version != VERSION:
            raise UserError(f"{path} is a gpt2kit dataset of version {version}; this gpt2kit reads version {VERSION}: "
                            f"encode the text again with `gpt2kit encode`")
        if width not in (2, 4):
            raise UserError(f"{path} is corrupted: its header says {width}-byte tokens (2 or 4); encode it again")
        dtype = np.dtype("<u2") if width == 2 else np.dtype("<u4")
        expected = HEADER.size + n_tokens * width
        if path.stat().st_size != expected:
            raise UserError(f"{path} is truncated or corrupted: {path.stat().st_size:,} bytes, expected {expected:,}; encode it again")
        if n_tokens == 0:
            return np.zeros(0, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(n_tokens,))
    if path.suffix == ".bin":  # nanoGPT: a headerless stream of uint16
        if path.stat().st_size % 2:
            raise UserError(f"{path} has an odd number of bytes: not a nanoGPT uint16 .bin file")
        return np.memmap(path, dtype=np.uint16, mode="r") if path.stat().st_size else np.zeros(0, np.uint16)
    raise UserError(f"{path} is not a token dataset (gpt2kit, .npz or nanoGPT .bin); "
                    f"pass text files and gpt2kit encodes them, or run `gpt2kit encode {path} --output data.tokens`")


def _read_npz(path: Path) -> np.ndarray:
    """gpt-2-simple's .npz: every array flattened and joined, as uint16 where the ids fit."""
    try:
        with np.load(path) as npz:
            arrays = [npz[k].reshape(-1) for k in npz.files]
    # A damaged zip fails inside zipfile or zlib with their own exception types, an "encrypted" member with
    # RuntimeError, an absurd array size with MemoryError (all found by fuzzing).
    except (ValueError, OSError, EOFError, RuntimeError, MemoryError, zipfile.BadZipFile, zlib.error,
            NotImplementedError) as e:
        raise UserError(f"{path} is not a readable .npz dataset ({str(e)[:120]}); encode the text again") from None
    for a in arrays:
        if a.dtype.kind not in "ui" or (a.size and int(a.min()) < 0):
            raise UserError(f"{path} holds {a.dtype} values{' below 0' if a.dtype.kind in 'ui' else ''}, "
                            f"not token ids; encode the text again")
    if not arrays:
        return np.zeros(0, np.uint16)
    return np.concatenate(arrays).astype(np.int64 if max(a.max(initial=0) for a in arrays) > 65535 else np.uint16)


def dataset_info(path: str | Path) -> dict:
    path = Path(path)
    tokens = read_tokens(path)
    info = {"path": str(path), "tokens": int(tokens.size)}
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
    if head[:8] == MAGIC:
        _, version, width, _, n_vocab, n_docs = HEADER.unpack(head)
        info.update(format=f"gpt2kit v{version}", n_vocab=n_vocab, documents=n_docs)
    else:
        info["format"] = "npz" if path.suffix == ".npz" else "nanoGPT bin"
    return info
