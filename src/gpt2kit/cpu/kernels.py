"""gpt2kit's C kernels (gpt2kit/kernels/*.c), compiled for this CPU on first use, called through ctypes.

Why not a PyTorch C++ extension: building against PyTorch's headers takes about a minute, and pip
would need a compiler at install time. The kernels are plain C (no PyTorch headers), so gcc builds
them in a second or two the first time a model is loaded; the library is kept under
GPT2KIT_HOME/kernels, named by a hash of the source, the compiler and its flags.

One source tree, compiled per instruction set: AVX2 + FMA + F16C everywhere they exist, and where
the CPU also has AVX-512 (F, BW, VL, DQ) the same source with -mavx512*, which switches its vectors
to 16 lanes, adding int8 x int8 dot products where it has AVX512-VNNI and bf16 x bf16 ones where it
has AVX512-BF16. Where nothing can be built (no C compiler, not x86, GPT2KIT_NATIVE=0), PyTorch's own
kernels do the work: slower, the same numbers. Nothing here is cached across changes of the
environment: the key of every loaded library includes everything that decided it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import durable
from ..paths import KERNEL_SOURCES_DIR, kernels_dir
from .features import CpuInfo, detect
from .structs import ModelStruct

log = logging.getLogger("gpt2kit")

SOURCES = [KERNEL_SOURCES_DIR / name for name in ("matvec.c", "decode_step.c", "attention.c", "vmath.c", "topk.c")]
COMMON_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC"]
LIBS = ["-lm"]
AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c"]
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
# kernels/matvec.c's weight kinds (its wkind enum)
KINDS = {"float32": 0, "float16": 1, "int8": 2, "bfloat16": 3, "int8a8": 4, "bfloat16a16": 5}


@dataclass(frozen=True)
class Kernels:
    """A loaded kernel library and the instruction set it was built for."""

    lib: ctypes.CDLL
    path: Path
    isa: str  # "avx2", "avx512", "avx512-vnni", "avx512-vnni-bf16", ...

    @property
    def kinds(self) -> frozenset[str]:
        """The weight kinds this build computes (weights.KINDS' names)."""
        mask = self.lib.gpt2kit_kinds()
        return frozenset(name for name, bit in KINDS.items() if mask >> bit & 1)


def isa_for(cpu: CpuInfo) -> tuple[str, list[str]] | None:
    """The widest instruction set gpt2kit has kernels for on `cpu`, and its compiler flags."""
    if not cpu.avx2:
        return None
    if not cpu.avx512:
        return "avx2", AVX2_FLAGS
    name, flags = "avx512", AVX2_FLAGS + AVX512_FLAGS
    if cpu.avx512_vnni:
        name, flags = name + "-vnni", flags + ["-mavx512vnni"]
    if cpu.avx512_bf16:
        name, flags = name + "-bf16", flags + ["-mavx512bf16"]
    return name, flags


def disabled() -> bool:
    return os.environ.get("GPT2KIT_NATIVE", "1").lower() in ("0", "false", "no")


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


# (everything that decides the library) -> the library, or why there is none
_loaded: dict[tuple, Kernels | str] = {}


def _key(cpu: CpuInfo) -> tuple:
    return (disabled(), cpu, compiler(), str(kernels_dir()))


def load(cpu: CpuInfo | None = None) -> Kernels | None:
    """The kernels built for `cpu` (this machine's by default), or None (`why_not` says why)."""
    got = _get(cpu or detect())
    return got if isinstance(got, Kernels) else None


def why_not(cpu: CpuInfo | None = None) -> str | None:
    got = _get(cpu or detect())
    return None if isinstance(got, Kernels) else got


def status(cpu: CpuInfo | None = None) -> str:
    """One line for people: are the kernels in use here, and if not, why."""
    got = _get(cpu or detect())
    return f"in use ({got.isa}, {got.path})" if isinstance(got, Kernels) else f"not in use: {got}"


def _get(cpu: CpuInfo) -> Kernels | str:
    key = _key(cpu)
    if key not in _loaded:
        _loaded[key] = _load(cpu)
        if isinstance(_loaded[key], str):
            log.debug("CPU kernels not in use (%s): PyTorch's kernels do the work", _loaded[key])
    return _loaded[key]


def _load(cpu: CpuInfo) -> Kernels | str:
    if disabled():
        return "GPT2KIT_NATIVE=0"
    if not cpu.x86_linux:
        return f"they are for x86-64 Linux, this is {cpu.machine} {cpu.system}"
    isa = isa_for(cpu)
    if isa is None:
        return "this CPU lacks AVX2, FMA or F16C"
    cc = compiler()
    if cc is None:
        return "no C compiler found; install gcc for faster CPU generation"
    name, flags = isa
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + " ".join([cc, *COMMON_FLAGS, *flags]).encode())
    so = kernels_dir() / f"gpt2kit-{name}-{digest.hexdigest()[:16]}.so"
    try:
        if not so.is_file():
            log.debug("building the CPU kernels for %s (once): %s", name, so)
            _build(so, cc, flags)
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.SubprocessError) as e:
        detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()
        return f"could not build them with {cc}: {detail[0] if detail else e}"
    _declare(lib)
    return Kernels(lib, so, name)


def _build(so: Path, cc: str, flags: list[str]) -> None:
    so.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=so.parent)
    os.close(fd)
    try:
        subprocess.run(
            [cc, *COMMON_FLAGS, *flags, "-o", tmp, *map(str, SOURCES), *LIBS],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.chmod(tmp, 0o755)
        durable.replace(tmp, so)  # a second process building at the same time finds a whole library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.gpt2kit_linear.argtypes = [p, i64, i64, p, i64, ctypes.c_int, p, p, ctypes.c_int, p, ctypes.c_int]
    lib.gpt2kit_linear.restype = ctypes.c_int
    lib.gpt2kit_decode_step.argtypes = [
        ctypes.POINTER(ModelStruct),
        p,
        p,
        p,
        i64,
        i64,
        p,
        p,
        ctypes.c_int,
        p,
        i64,
        i64,
        p,
        ctypes.c_int,
    ]
    lib.gpt2kit_decode_step.restype = ctypes.c_int
    lib.gpt2kit_gelu.argtypes = [p, i64]  # vmath.c's two, declared for tests/test_cpu.py
    lib.gpt2kit_gelu.restype = None
    lib.gpt2kit_gelu_all.argtypes = [p, i64, ctypes.c_int]
    lib.gpt2kit_gelu_all.restype = None
    lib.gpt2kit_exp_shifted.argtypes = [p, i64, ctypes.c_float]
    lib.gpt2kit_exp_shifted.restype = None
    lib.gpt2kit_topk.argtypes = [p, i64, i64, i64, p, p, ctypes.c_int]
    lib.gpt2kit_topk.restype = i64
    lib.gpt2kit_kinds.argtypes = []
    lib.gpt2kit_kinds.restype = ctypes.c_int
