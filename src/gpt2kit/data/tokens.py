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
        self.tmp = durable.temp_name(self.path)  # not NAME.tmp: a file of the user's could have that name
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
        raise not_a_dataset(path)
    if path.suffix == ".npz":
        return _read_npz(path)
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
    if head[:8] == MAGIC:
        return _read_ours(path, head)
    if path.suffix == ".bin":  # nanoGPT: a headerless stream of uint16
        if path.stat().st_size % 2:
            raise UserError(f"{path} has an odd number of bytes: not a nanoGPT uint16 .bin file")
        return np.memmap(path, dtype=np.uint16, mode="r") if path.stat().st_size else np.zeros(0, np.uint16)
    raise UserError(
        f"{path} is not a token dataset (gpt2kit, .npz or nanoGPT .bin); "
        f"pass text files and gpt2kit encodes them, or run `gpt2kit encode {path} --output data.tokens`"
    )


def _read_ours(path: Path, head: bytes) -> np.ndarray:
    if len(head) < HEADER.size:
        raise UserError(
            f"{path} is truncated: its {len(head)} bytes do not hold a gpt2kit dataset header; encode it again"
        )
    magic, version, width, n_tokens, n_vocab, n_docs = HEADER.unpack(head)
    if version != VERSION:
        raise UserError(
            f"{path} is a gpt2kit dataset of version {version}; this gpt2kit reads version {VERSION}: "
            f"encode the text again with `gpt2kit encode`"
        )
    if width not in (2, 4):
        raise UserError(f"{path} is corrupted: its header says {width}-byte tokens (2 or 4); encode it again")
    dtype = np.dtype("<u2") if width == 2 else np.dtype("<u4")
    expected = HEADER.size + n_tokens * width
    if path.stat().st_size != expected:
        raise UserError(
            f"{path} is truncated or corrupted: {path.stat().st_size:,} bytes, expected {expected:,}; encode it again"
        )
    if n_tokens == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(n_tokens,))


def not_a_dataset(path: Path) -> UserError:
    """Why `path` (not a regular file) cannot be read as a token dataset, and what to give instead."""
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.is_file() and is_token_file(p))
        if found:
            return UserError(
                f"{path} is a folder, not a token dataset; it holds the datasets {', '.join(found[:3])}"
                f"{', ...' if len(found) > 3 else ''}: give one of them, such as {path / found[0]}"
            )
        return UserError(
            f"{path} is a folder, not a token dataset, and {describe_folder(path)}; give the dataset "
            f"file `gpt2kit encode` wrote, or make one with `gpt2kit encode TEXT... --output "
            f"{path / 'corpus.tokens'}`"
        )
    if path.exists():
        return UserError(f"{path} is not a regular file; give a token dataset file (.tokens, .npz or .bin)")
    return UserError(f"dataset {path} does not exist; make one with `gpt2kit encode TEXT... --output {path}`")


def describe_folder(path: Path) -> str:
    """What a folder holds, in a few words for a message: "it is empty", "it holds 2 entries: a.txt, b/"."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return "it is empty"  # hidden files too: "empty" must be true
    more = ", ..." if len(names) > 3 else ""
    return f"it holds {len(names)} entr{'y' if len(names) == 1 else 'ies'}: {', '.join(names[:3])}{more}"


def check_ids(
    tokens: np.ndarray,
    n_vocab: int,
    path: Path | str,
    *,
    whose: str = "the model's",
    advice: str = "encode its text again with this model's tokenizer (`gpt2kit encode --output ...`)",
) -> None:
    """The one rule for token ids against a vocabulary (finetune, perplexity, decode): every id below its size.

    Checked before any model runs: an id past the embedding is an IndexError deep in PyTorch, and one past
    the tokenizer a KeyError in tiktoken. A dataset encoded for another (larger) vocabulary is the usual cause."""
    top = int(tokens.max()) if tokens.size else -1
    if top >= n_vocab:
        raise UserError(
            f"{path} holds token ids up to {top}, but {whose} vocabulary has {n_vocab:,} tokens "
            f"(ids 0 to {n_vocab - 1}): it was encoded for another vocabulary; {advice}"
        )


def check_replaceable(path: Path) -> None:
    """Before encoding into `path`: it must be absent, empty, or a gpt2kit dataset (re-encoding replaces it).

    Anything else is the user's and is never replaced: once a device node (/dev/full) became a regular file."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise UserError(
            f"the output {path} exists and is not a regular file; give the path of a new dataset file, "
            f"such as data/corpus.tokens"
        )
    if path.stat().st_size == 0:
        return  # nothing to lose (a file made by `touch` or `mktemp`)
    with open(path, "rb") as f:
        ours = f.read(len(MAGIC)) == MAGIC
    if not ours:
        raise UserError(
            f"the output {path} exists and is not a gpt2kit token dataset, and encode replaces only its "
            f"own datasets; give another path, or delete {path} first if it may go"
        )


def _read_npz(path: Path) -> np.ndarray:
    """gpt-2-simple's .npz: every array flattened and joined, as uint16 where the ids fit."""
    if not zipfile.is_zipfile(path):  # else np.load tries other formats and blames pickling (or returns an .npy array)
        raise UserError(f"{path} is not a readable .npz dataset: {_not_zip(path)}; encode the text again")
    try:
        with np.load(path) as npz:
            members = {k: npz[k] for k in npz.files}
    # A damaged zip fails inside zipfile or zlib with their own exception types, an "encrypted" member with
    # RuntimeError, an absurd array size with MemoryError (all found by fuzzing).
    except (
        ValueError,
        OSError,
        EOFError,
        RuntimeError,
        MemoryError,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
    ) as e:
        raise UserError(f"{path} is not a readable .npz dataset: {_npz_reason(e)}; encode the text again") from None
    for name, a in members.items():
        if not isinstance(a, np.ndarray):  # NpzFile hands back a member that is not .npy as its raw bytes
            raise UserError(
                f"{path} is not a .npz dataset: its member {name!r} is not a NumPy array; encode the text again"
            )
    arrays = [a.reshape(-1) for a in members.values()]
    for a in arrays:
        if a.dtype.kind not in "ui" or (a.size and int(a.min()) < 0):
            raise UserError(
                f"{path} holds {a.dtype} values{' below 0' if a.dtype.kind in 'ui' else ''}, "
                f"not token ids; encode the text again"
            )
    if not arrays:
        return np.zeros(0, np.uint16)
    return np.concatenate(arrays).astype(np.int64 if max(a.max(initial=0) for a in arrays) > 65535 else np.uint16)


def _not_zip(path: Path) -> str:
    """Why a file named .npz is not one: a .npz is a zip archive of .npy arrays."""
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        return "the file is empty"
    if head == b"\x93NUMPY":
        return "it is a single NumPy .npy array, not a .npz archive (save it with np.savez)"
    if head[:4] == b"PK\x03\x04":
        return "it starts like a zip archive but is truncated or damaged"
    return "it is not a zip archive, which every .npz file is"


def _npz_reason(e: BaseException) -> str:
    """One short, whole line for what np.load raised."""
    if isinstance(e, ValueError) and "allow_pickle" in str(e):
        return "it holds pickled Python objects, not arrays of token ids (gpt2kit never unpickles a dataset)"
    if isinstance(e, zlib.error):
        return f"a compressed array in it is damaged ({e})"
    if isinstance(e, MemoryError):
        return "an array in it claims a size larger than this machine's memory"
    reason = (str(e).splitlines() or [type(e).__name__])[0]
    if len(reason) > 150:  # numpy quotes whole malformed headers: keep whole words, and say it was cut
        reason = reason[:150].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {reason}" if isinstance(e, (zipfile.BadZipFile, EOFError)) else reason


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
