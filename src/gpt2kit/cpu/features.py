"""What this CPU can do, read at call time and injectable, so every CPU-dependent choice is testable anywhere.

Every decision gpt2kit makes about a CPU (which kernels build, what `--dtype auto` means, which
precision training uses) takes a `CpuInfo`, never /proc/cpuinfo directly. Tests pass a `CpuInfo` of
any family (AVX2 only, AVX-512, AVX512-BF16, AMX, not x86) to those functions; on a real machine
`GPT2KIT_CPU_FLAGS` narrows what gpt2kit believes the CPU has (only narrows: claiming an instruction the
CPU lacks would crash the kernels), so a run on an AVX-512 machine can take the AVX2 path end to end.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

# The flags gpt2kit's choices depend on (Linux /proc/cpuinfo spellings).
AVX2 = frozenset({"avx2", "fma", "f16c"})
AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})  # either gives PyTorch fast bf16 matmuls
RELEVANT = AVX2 | AVX512 | NATIVE_BF16 | {"avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "avx512_fp16"}


@dataclass(frozen=True)
class CpuInfo:
    machine: str  # platform.machine(): x86_64, aarch64, ...
    system: str  # platform.system(): Linux, Darwin, ...
    model: str  # "AMD EPYC 7B13", "" where unknown
    cores: int
    flags: frozenset[str]

    @property
    def x86_linux(self) -> bool:
        return self.system == "Linux" and self.machine in ("x86_64", "AMD64")

    @property
    def avx2(self) -> bool:
        return self.x86_linux and AVX2 <= self.flags

    @property
    def avx512(self) -> bool:
        return self.avx2 and AVX512 <= self.flags

    @property
    def avx512_vnni(self) -> bool:
        return self.avx512 and "avx512_vnni" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return self.avx512 and "avx512_bf16" in self.flags

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls in hardware (AVX512-BF16 or AMX): without them PyTorch emulates bf16, dozens of times slower."""
        return bool(self.flags & NATIVE_BF16)

    @property
    def family(self) -> str:
        """The family name benchmarks and `gpt2kit info` show."""
        if not self.x86_linux:
            return f"{self.machine} {self.system}"
        if "amx_bf16" in self.flags:
            return "x86-64 AMX"
        if self.avx512_bf16:
            return "x86-64 AVX-512 BF16"
        if self.avx512:
            return "x86-64 AVX-512"
        if self.avx2:
            return "x86-64 AVX2"
        return "x86-64 without AVX2"

    def describe(self) -> str:
        shown = " ".join(sorted(self.flags & RELEVANT)) or "none of interest"
        return f"{self.model or 'unknown CPU'}, {self.cores} cores, {self.family} (flags: {shown})"


def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        # The first processor's lines say it all; the kernel writes the file as it is read, so stopping
        # there spares a many-core machine the rest (a few hundred KB, each core's clock queried).
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def detect() -> CpuInfo:
    """This machine's CPU, narrowed by GPT2KIT_CPU_FLAGS where set (read at every call)."""
    model, flags = _cpuinfo()
    narrowed = os.environ.get("GPT2KIT_CPU_FLAGS")
    if narrowed is not None:
        flags = flags & frozenset(narrowed.replace(",", " ").split())
    return CpuInfo(platform.machine(), platform.system(), model, os.cpu_count() or 1, flags)


def info(family: str, *, model: str = "injected CPU", cores: int = 2) -> CpuInfo:
    """A CpuInfo of a named family, for tests and for planning on paper:
    'avx2', 'avx512', 'avx512_bf16', 'amx', 'old_x86' (no AVX2), 'arm'."""
    families = {
        "old_x86": frozenset({"sse4_2", "avx"}),
        "avx2": AVX2 | {"avx"},
        "avx512": AVX2 | AVX512 | {"avx", "avx512_vnni"},
        "avx512_bf16": AVX2 | AVX512 | {"avx", "avx512_vnni", "avx512_bf16"},
        "amx": AVX2 | AVX512 | {"avx", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"},
        "arm": frozenset({"fp", "asimd"}),
    }
    if family not in families:
        raise ValueError(f"unknown CPU family {family!r}: one of {', '.join(families)}")
    machine = "aarch64" if family == "arm" else "x86_64"
    return CpuInfo(machine, "Linux", model, cores, families[family])
