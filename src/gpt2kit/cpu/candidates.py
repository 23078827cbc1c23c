"""The ways this CPU can run a model's matrices, and building a model on one of them.

A candidate is a weight format (float32, float16, bfloat16, int8) on an engine: gpt2kit's C kernels
where they build here, else PyTorch's own kernels. `--dtype X` picks X's candidate; `--dtype auto`
picks among `candidates()` by measurement (tuning.py, policy.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from ..errors import UserError
from ..model import GPT
from ..options import DTYPE_NAMES, INT8, dtype_choices
from . import gelu
from .features import CpuInfo
from .kernels import Kernels
from .runner import CpuGPT, MakeLinear, block_matrices, swap_matrices
from .step import KernelStep
from .weights import BF16Linear, InputMajorLinear, KernelLinear, OneDNNLinear, TorchInt8Linear, has_onednn

WEIGHT_FORMATS = {**DTYPE_NAMES, INT8: INT8}  # --dtype's names -> the weight format on the CPU path


@dataclass(frozen=True)
class Candidate:
    dtype: str  # the weight format: float32, float16, bfloat16, int8
    engine: str  # "kernels" (gpt2kit's C) or "torch" (PyTorch's own)
    kind: str = ""  # the kernels' kind where it is not `dtype` itself (int8a8, bfloat16a16)

    @property
    def name(self) -> str:
        return f"{self.kind or self.dtype}/{self.engine}"


def candidates(cpu: CpuInfo, kernels: Kernels | None) -> list[Candidate]:
    """What `--dtype auto` chooses among on `cpu`."""
    if kernels is not None:
        found = [Candidate(d, "kernels") for d in ("float32", "float16", "bfloat16", "int8")]
        # int8 x int8 (VNNI) and bf16 x bf16 dot products, where this build has them
        found += [
            Candidate(d, "kernels", k)
            for d, k in (("int8", "int8a8"), ("bfloat16", "bfloat16a16"))
            if k in kernels.kinds
        ]
    else:
        found = [Candidate("float32", "torch"), Candidate("int8", "torch")]
    if cpu.native_bf16:  # bf16 arithmetic through oneDNN: only fast where the CPU has it
        found.append(Candidate("bfloat16", "torch"))
    return found


def for_dtype(dtype: str, kernels: Kernels | None) -> Candidate:
    """The candidate an explicit `--dtype` names: the kernels' where they are here."""
    if dtype not in WEIGHT_FORMATS:
        raise UserError(f"unknown dtype {dtype!r}: use {dtype_choices()}")
    return Candidate(WEIGHT_FORMATS[dtype], "kernels" if kernels is not None else "torch")


def linear_maker(c: Candidate, kernels: Kernels | None) -> MakeLinear:
    """make(weight (out, in), bias) -> the module that multiplies by it on candidate `c`."""
    if c.engine == "kernels":
        if kernels is None:
            raise ValueError("the kernels' candidate needs the kernels")
        return lambda w, b: KernelLinear(kernels, w, b, c.kind or c.dtype)
    if c.dtype == "int8":
        return TorchInt8Linear
    if c.dtype in ("bfloat16", "float16"):
        dt = torch.bfloat16 if c.dtype == "bfloat16" else torch.float16
        return lambda w, b: BF16Linear(w, b, dt)
    return OneDNNLinear if has_onednn() else InputMajorLinear


def kv_dtype(c: Candidate) -> torch.dtype | None:
    """The KV cache's element type on candidate `c` (None: fp32, the activations'). A decoding step reads
    every cached position of every row: at a few hundred positions that outweighs the matrices, so the C
    step keeps the cache in fp16, a rounding finer than the reduced weight formats' own. float32 stays
    exact, and PyTorch's engines keep fp32."""
    return torch.float16 if c.engine == "kernels" and c.dtype != "float32" else None


def activation(c: Candidate, kernels: Kernels | None) -> gelu.Gelu:
    """The GELU a model's MLPs call on candidate `c`: the kernels' vector one on their engine (their C step's
    own), PyTorch's elsewhere."""
    return gelu.for_kernels(kernels if c.engine == "kernels" else None)


def build(gpt: GPT, c: Candidate, kernels: Kernels | None) -> CpuGPT:
    """`gpt` (fp32, on the CPU) on candidate `c`; its matrices are replaced in place."""
    head = swap_matrices(gpt, linear_maker(c, kernels), release_sources=True)
    for block in gpt.h:
        block.attn.kv_dtype = kv_dtype(c)
        block.mlp.gelu = activation(c, kernels)
    step = KernelStep(kernels, gpt, head) if c.engine == "kernels" else None
    return CpuGPT(gpt, head, step, c.name)


@contextlib.contextmanager
def on_candidate(block: nn.Module, c: Candidate, kernels: Kernels | None) -> Iterator[nn.Module]:
    """`block` (one of a GPT's) with its four matrices on candidate `c` for the duration of the `with`,
    then back as it was (for measuring): one block's converted matrices exist at a time, never a second model.
    They compute exactly what the built model's do (the same modules, made from the same weights)."""
    make = linear_maker(c, kernels)
    saved = [(parent, name, getattr(parent, name)) for parent, name in block_matrices(block)]
    kv, act = block.attn.kv_dtype, block.mlp.gelu
    try:
        for parent, name, lin in saved:
            setattr(parent, name, make(lin.weight, lin.bias))
        block.attn.kv_dtype, block.mlp.gelu = kv_dtype(c), activation(c, kernels)
        yield block
    finally:
        for parent, name, module in saved:
            setattr(parent, name, module)
        block.attn.kv_dtype, block.mlp.gelu = kv, act
