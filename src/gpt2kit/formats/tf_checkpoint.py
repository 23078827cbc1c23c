"""Read TensorFlow checkpoints (the tensor-bundle format) without TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index`, an immutable LevelDB-style table mapping each variable
name to a BundleEntryProto (dtype, shape, shard, offset, size), and `PREFIX.data-0000N-of-0000M`,
the raw little-endian tensor bytes. Format references: TensorFlow's core/util/tensor_bundle and
core/lib/io/table_format.txt.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_LEN = 48  # two BlockHandles padded to 40 bytes + 8 bytes of magic
BLOCK_TRAILER_LEN = 5  # compression type byte + crc32c

# TensorFlow DataType enum values (types.proto) -> numpy little-endian dtypes.
TF_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 14: "bfloat16", 19: "<f2"}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message; nested messages stay bytes."""
    if not isinstance(buf, bytes):  # a field that should hold a message holds a number: corrupted
        raise ValueError(f"expected a nested message, found {buf!r}")
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _snappy_decompress(data: bytes) -> bytes:
    """Snappy's raw format, for tables written with compression on (TF writes bundles without)."""
    length, pos = _varint(data, 0)
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            n = tag >> 2
            if n >= 60:
                extra = n - 59
                n = int.from_bytes(data[pos : pos + extra], "little")
                pos += extra
            n += 1
            out += data[pos : pos + n]
            pos += n
            continue
        if kind == 1:
            n = ((tag >> 2) & 7) + 4
            off = ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            n = (tag >> 2) + 1
            off = int.from_bytes(data[pos : pos + 2], "little")
            pos += 2
        else:
            n = (tag >> 2) + 1
            off = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        for _ in range(n):  # copies may overlap their own output
            out.append(out[-off])
    if len(out) != length:
        raise ValueError("snappy block has the wrong length")
    return bytes(out)


def _read_block(table: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    if offset + size + BLOCK_TRAILER_LEN > len(table):
        raise ValueError("block runs past the end of the file")
    block = table[offset : offset + size]
    compression = table[offset + size]
    if compression == 1:
        block = _snappy_decompress(block)
    elif compression != 0:
        raise ValueError(f"unknown block compression {compression}")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def _parse_entry(name: str, value: bytes) -> TensorEntry:
    dtype, shape, shard, offset, size = 1, [], 0, 0, 0
    for field, _, v in _proto_fields(value):
        if field == 1:
            dtype = v
        elif field == 2:
            for f2, _, dim in _proto_fields(v):
                if f2 == 2:
                    shape.append(next((s for f3, _, s in _proto_fields(dim) if f3 == 1), 0))
        elif field == 3:
            shard = v
        elif field == 4:
            offset = v
        elif field == 5:
            size = v
        elif field == 7:
            raise ValueError(f"{name} is a partitioned (sliced) variable, which gpt2kit does not read")
    numbers = [dtype, shard, offset, size, *shape]
    if not all(isinstance(n, int) and 0 <= n < 1 << 48 for n in numbers):  # a flipped wire type gives bytes
        raise ValueError(f"{name}'s entry holds {numbers}, not sizes and offsets")
    return TensorEntry(name, dtype, tuple(shape), shard, offset, size)


def read_index(prefix: Path) -> tuple[dict[str, TensorEntry], int]:
    """PREFIX.index -> ({variable name: entry}, number of data shards)."""
    index_path = Path(str(prefix) + ".index")
    try:
        table = index_path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {index_path}: {e.strerror}") from None
    try:
        if len(table) < FOOTER_LEN or struct.unpack_from("<Q", table, len(table) - 8)[0] != TABLE_MAGIC:
            raise ValueError("not a TensorFlow checkpoint index (bad magic number)")
        footer = table[-FOOTER_LEN:]
        _, p = _varint(footer, 0)  # metaindex handle: unused
        _, p = _varint(footer, p)
        index_offset, p = _varint(footer, p)
        index_size, p = _varint(footer, p)
        entries: dict[str, TensorEntry] = {}
        num_shards = 1
        for _, handle in _read_block(table, index_offset, index_size):
            off, q = _varint(handle, 0)
            size, _ = _varint(handle, q)
            for key, value in _read_block(table, off, size):
                if key == b"":  # BundleHeaderProto
                    num_shards = next((v for f, _, v in _proto_fields(value) if f == 1), 1)
                    if not isinstance(num_shards, int) or not 1 <= num_shards < 1 << 16:
                        raise ValueError(f"the header says {num_shards!r} data shards")
                    continue
                name = key.decode("utf-8")
                entries[name] = _parse_entry(name, value)
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as e:
        raise UserError(f"{index_path} is corrupted or not a TensorFlow checkpoint index ({e})") from None
    return entries, num_shards


class TFCheckpoint:
    """Lazy reader: names and shapes come from the index; `read` returns views of the mapped data files,
    so nothing is read (or held) until a tensor is used, and mapped.release gives its pages back."""

    def __init__(self, prefix: Path):
        self.prefix = Path(prefix)
        self.entries, self.num_shards = read_index(self.prefix)
        self._shards: dict[int, np.memmap] = {}

    def shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def _shard(self, shard: int) -> np.ndarray:
        if shard not in self._shards:
            path = self.shard_path(shard)
            if not path.is_file():
                raise UserError(f"{path} is missing: the checkpoint's data file must sit beside its .index")
            # Copy-on-write mapping ("c"): tensors read from it are writable views, and a write never reaches the file.
            self._shards[shard] = (
                np.memmap(path, dtype=np.uint8, mode="c") if path.stat().st_size else np.zeros(0, np.uint8)
            )
        return self._shards[shard]

    def read(self, name: str) -> np.ndarray:
        e = self.entries[name]
        if e.dtype not in TF_DTYPES:
            raise UserError(
                f"{self.prefix}: variable {name} has TensorFlow dtype {e.dtype}, which gpt2kit does not read"
            )
        data = self._shard(e.shard)
        if e.offset + e.size > len(data):
            raise UserError(
                f"{self.shard_path(e.shard)} is truncated: {name} needs bytes up to {e.offset + e.size:,} "
                f"but the file has {len(data):,}. Download or copy the checkpoint again"
            )
        itemsize = 2 if TF_DTYPES[e.dtype] == "bfloat16" else np.dtype(TF_DTYPES[e.dtype]).itemsize
        if e.size % itemsize:
            raise UserError(
                f"{self.prefix}.index gives {name} {e.size} bytes, not a whole number of values: "
                f"the checkpoint is corrupted"
            )
        raw = np.asarray(data[e.offset : e.offset + e.size])  # a view of the mapped file: nothing is read yet
        if TF_DTYPES[e.dtype] == "bfloat16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.view(TF_DTYPES[e.dtype])
        if arr.size != int(np.prod(e.shape, dtype=np.int64)):
            raise UserError(
                f"{self.prefix}.index says {name} has shape {e.shape} but holds {arr.size} values: the checkpoint is corrupted"
            )
        if not arr.flags.aligned:  # TF pads tensors to their alignment; a copy only for files that do not
            arr = arr.copy()
        return arr.reshape(e.shape)
