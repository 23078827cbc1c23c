"""Memory-mapped weights: reading them costs no memory until touched, and touched pages can be given back.

The loaders hand out tensors that are views of the checkpoint files (safetensors' own mmap, a numpy
memmap for TensorFlow's data files), so reading a model copies nothing. A page of such a view that has
been read counts in the process's RSS until it is unmapped; `release` gives those pages back once a
tensor has been converted to its final form (fp16, int8, a transposed fp32 copy), so converting a
model holds the source of one tensor at a time, not the whole fp32 file.

Pages are dropped with MADV_DONTNEED, which keeps them in the page cache (a second load reads no disk),
but on a private file mapping it would also throw away a page someone wrote to (copy-on-write): so
`release` first reads /proc/self/pagemap and uses DONTNEED only when every resident page of the range is
still the file's own; otherwise MADV_PAGEOUT, which never loses data (it cannot drop dirty or written
pages, so less is given back).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator

import numpy as np
import torch

MADV_DONTNEED, MADV_PAGEOUT = 4, 21  # PAGEOUT: Linux 5.4+; where madvise fails nothing is released
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_libc = None


def _libc_function(name: str):
    """libc's `name` through ctypes, or None where this process has no such C library function."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    return getattr(_libc, name, None) if _libc else None


def release(t: torch.Tensor | None) -> None:
    """Give back the resident pages of `t`'s bytes if they are mapped from a file (no-op otherwise).

    Only whole pages inside the tensor are released, so a neighbour sharing a boundary page keeps it.
    `t` stays valid: reading it again reads the file again.
    """
    madvise = _libc_function("madvise")
    if t is None or madvise is None or t.device.type != "cpu" or t.numel() == 0:
        return
    if any(st < 0 for st in t.stride()):
        return
    begin = t.data_ptr()  # the first element; the last one is sum((size - 1) * stride) elements further
    end_byte = begin + (sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1) * t.element_size()
    start, end = -(-begin // _PAGE) * _PAGE, end_byte // _PAGE * _PAGE
    if end > start and (pages := _pages(start, end)) != "anonymous":
        madvise(start, end - start, MADV_DONTNEED if pages == "file" else MADV_PAGEOUT)


def _pages(start: int, end: int) -> str:
    """What backs the resident pages of [start, end): "file" (only the file's own pages), "anonymous"
    (no file page: plain memory, freed by dropping the tensor, and paging it out would only write it
    to swap), or "mixed" (a file mapping with pages written copy-on-write, or unknown)."""
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(start // _PAGE * 8)
            entries = np.frombuffer(f.read((end - start) // _PAGE * 8), dtype=np.uint64)
    except OSError:
        return "mixed"
    # bit 63 present, bit 62 swapped, bit 61 a file page (or shared anonymous): kernel's pagemap.rst
    in_use = (entries >> np.uint64(62)) != 0
    file_page = ((entries >> np.uint64(61)) & np.uint64(1)) == 1
    if not len(entries) or bool(np.any(in_use & ~file_page)):
        return "anonymous" if len(entries) and not bool(np.any(file_page)) else "mixed"
    return "file"


def resident_bytes() -> int:
    """This process's resident memory now (VmRSS), in bytes: for tests and benchmarks."""
    return _status_kb("VmRSS") * 1024


def peak_resident_bytes() -> int:
    """This process's peak resident memory (VmHWM: anonymous and file-mapped pages), in bytes."""
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -3, -1  # glibc's mallopt parameters


@contextlib.contextmanager
def allocator_for_loading() -> Iterator[None]:
    """Big allocations returnable for the length of a load, then freed memory kept for reuse after it,
    whether the load returned or raised: a failed load must not leave every later pass faulting."""
    keep_big_allocations_returnable()
    try:
        yield
    finally:
        keep_freed_memory_for_reuse()


def keep_big_allocations_returnable(threshold: int = 128 * 1024) -> None:
    """Make glibc serve allocations over `threshold` bytes from their own mappings, which free() unmaps.

    glibc starts so (128 KB), but raises the threshold to the size of each big block freed, up to 32 MB;
    after that the conversion buffers of a load (16 MB blocks) come from the heap and stay resident when
    freed. Measured on 124M loaded as int8: peak RSS 703 MB without this, 560 MB with it. The cost is a
    page fault per page of each big temporary, small next to what is done with them. The trim threshold
    goes back to glibc's start too (an earlier load's keep_freed_memory_for_reuse raised it), and what the
    heap holds free goes back to the system before the load begins.
    """
    _mallopt(M_MMAP_THRESHOLD, threshold)
    _mallopt(M_TRIM_THRESHOLD, threshold)
    if (trim := _libc_function("malloc_trim")) is not None:
        trim(0)


def keep_freed_memory_for_reuse(threshold: int = 32 << 20, trim: int = 64 << 20) -> None:
    """After a load: serve blocks up to `threshold` bytes from the heap, and give free memory at the heap's
    top back to the system only past `trim` bytes, so each pass's activations reuse pages instead of
    mapping fresh ones.

    Left at the load's 128 KB, every activation over it (a 256-token prompt's, a 16-row step's logits) was
    mapped, zeroed and faulted in anew each time: 41,000 pages per 256-token pass of 124M, 166,000 per
    64-token generate at batch 16. With this, none and 15,000, and the process keeps about 135 MB more
    resident after a batch-16 generate (docs/memory.md). 32 MB is the most glibc takes.
    """
    _mallopt(M_MMAP_THRESHOLD, threshold)
    _mallopt(M_TRIM_THRESHOLD, trim)


def _mallopt(param: int, value: int) -> None:
    if (mallopt := _libc_function("mallopt")) is not None:
        mallopt(param, value)  # not glibc (musl, macOS): absent or ignored, and its allocator decides
