"""Which device and dtype to run on; 'auto' decides from what the hardware runs fast.

The one home of the PyTorch-level auto rule, for training and for inference off the CPU kernels.
(On CPUs, inference's `--dtype auto` is decided by measurement in gpt2kit.cpu.policy.)
"""

from __future__ import annotations

import torch

from .cpu.features import CpuInfo, detect
from .errors import UserError
from .options import DTYPE_NAMES, dtype_choices

DTYPES = {name: getattr(torch, canonical) for name, canonical in DTYPE_NAMES.items()}


def cpu_has_fast_bf16(cpu: CpuInfo | None = None) -> bool:
    """True when the CPU has native bf16 matmuls (AVX512-BF16 or AMX).

    Without them PyTorch emulates bf16 and runs dozens of times slower than fp32, so we read the
    CPU's flags rather than assume.
    """
    return (cpu or detect()).native_bf16


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps was asked for but no Apple GPU is available here; use --device cpu or auto")
    return torch.device(device)


def auto_dtype(device: torch.device, cpu: CpuInfo | None = None) -> torch.dtype:
    """PyTorch's compute dtype for 'auto': bf16 where the hardware runs it natively, else fp16 on
    older GPUs, else fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16(cpu):
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: str, device: torch.device, cpu: CpuInfo | None = None) -> torch.dtype:
    if dtype == "auto":
        return auto_dtype(device, cpu)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use {dtype_choices()}")
    return DTYPES[dtype]
