"""The AVX2 decoding kernels of kernels/*.c: compiled once on first use, called through ctypes.

Why not a PyTorch C++ extension: building against PyTorch's headers takes about a minute, and
pip would need a compiler at install time. This file is plain C (no PyTorch headers), so gcc builds
it in about a second the first time a model is loaded on an x86 CPU with AVX2, FMA and F16C; the
library is kept under GPT2KIT_HOME/kernels, named by a hash of the source and the compiler flags.
Where it cannot be built (no C compiler, another CPU, GPT2KIT_NATIVE=0) gpt2kit uses PyTorch's
own kernels instead, slower but the same numbers.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger("gpt2kit")

SOURCES = [Path(__file__).parent / "kernels" / name for name in ("matvec.c", "decode_step.c")]
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC"]
LIBS = ["-lm"]
# gpt2kit_linear's weight formats (kernels/matvec.c).
FP32, FP16, INT8 = 0, 1, 2


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _build(so: Path, compiler: str) -> None:
    so.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=so.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-o", tmp, *map(str, SOURCES), *LIBS], check=True, capture_output=True, timeout=120)
        os.chmod(tmp, 0o755)
        os.replace(tmp, so)  # atomic: a second process building at the same time finds a whole library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def kernels_dir() -> Path:
    from .paths import kernels_dir as _k
    return _k()


_why_not = "not tried yet"  # why library() is None, for `gpt2kit info`


def status() -> str:
    """One line for people: are the kernels in use here, and if not, why."""
    lib = library()
    return f"in use ({lib._name})" if lib is not None else f"not in use: {_why_not}"


def _unavailable(why: str) -> None:
    global _why_not
    _why_not = why
    log.debug("CPU kernels not in use (%s): PyTorch's kernels do the work", why)


@lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot be had here (status() says why)."""
    if os.environ.get("GPT2KIT_NATIVE", "1").lower() in ("0", "false", "no"):
        return _unavailable("GPT2KIT_NATIVE=0")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return _unavailable(f"they are for x86-64 Linux, this is {platform.machine()} {platform.system()}")
    if not {"avx2", "fma", "f16c"} <= cpu_flags():
        return _unavailable("this CPU lacks AVX2, FMA or F16C")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return _unavailable("no C compiler found; install gcc for faster CPU generation")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + " ".join([compiler, *FLAGS]).encode())
    so = kernels_dir() / f"gpt2kit-{digest.hexdigest()[:16]}.so"
    try:
        if not so.is_file():
            log.debug("building the CPU decoding kernels (once): %s", so)
            _build(so, compiler)
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.SubprocessError) as e:
        detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()
        return _unavailable(f"could not build them with {compiler}: {detail[0] if detail else e}")
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.gpt2kit_linear.argtypes = [p, i64, i64, p, i64, ctypes.c_int, p, p, ctypes.c_int, p, ctypes.c_int]
    lib.gpt2kit_linear.restype = ctypes.c_int
    lib.gpt2kit_decode_step.argtypes = [ctypes.POINTER(ModelStruct), p, p, i64, p, p, p, i64, i64, p, ctypes.c_int]
    lib.gpt2kit_decode_step.restype = ctypes.c_int
    return lib


def linear(x: torch.Tensor, weight: torch.Tensor, kind: int, scale: torch.Tensor | None,
           bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) fp32 @ weight (N, K)^T + bias (N,) -> (M, N) fp32, all contiguous on the CPU.

    weight is fp32 (FP32), fp16 (FP16), or int8 with one fp32 scale per row, scale (N,) (INT8).
    """
    lib = library()
    M, K = x.shape
    N = weight.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    rc = lib.gpt2kit_linear(x.data_ptr(), M, K, weight.data_ptr(), N, kind, address(scale), address(bias),
                            0, y.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise ValueError(f"gpt2kit_linear failed ({rc}): x {tuple(x.shape)}, weight {tuple(weight.shape)} kind {kind}")
    return y


def address(t: torch.Tensor | None) -> int | None:
    """A tensor's data pointer for ctypes, NULL for None."""
    return None if t is None else t.data_ptr()


# The structs of kernels/decode_step.c, field for field.
class MatrixStruct(ctypes.Structure):
    _fields_ = [("weight", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("kind", ctypes.c_int64)]


class LayerStruct(ctypes.Structure):
    _fields_ = [("ln_1_w", ctypes.c_void_p), ("ln_1_b", ctypes.c_void_p), ("c_attn", MatrixStruct),
                ("attn_c_proj", MatrixStruct), ("ln_2_w", ctypes.c_void_p), ("ln_2_b", ctypes.c_void_p),
                ("c_fc", MatrixStruct), ("mlp_c_proj", MatrixStruct)]


class ModelStruct(ctypes.Structure):
    _fields_ = [("n_layer", ctypes.c_int64), ("n_embd", ctypes.c_int64), ("n_head", ctypes.c_int64),
                ("n_vocab", ctypes.c_int64), ("eps", ctypes.c_float),
                ("wte", ctypes.c_void_p), ("wpe", ctypes.c_void_p), ("ln_f_w", ctypes.c_void_p),
                ("ln_f_b", ctypes.c_void_p), ("head", MatrixStruct), ("h", ctypes.POINTER(LayerStruct))]
