"""GPT-2's GELU for a prompt pass on the kernels' path: kernels/vmath.c's vector GELU, in place on the MLP's
first product, split between the threads, in place of PyTorch's tanh GELU (a full-precision tanh per value).
The C step's MLP applies the same function, so a model's prompts and steps compute their GELU alike."""

from __future__ import annotations

import functools
from typing import Callable

import torch

from ..model import gelu
from .kernels import Kernels

Gelu = Callable[[torch.Tensor], torch.Tensor]


def for_kernels(kernels: Kernels | None) -> Gelu:
    """What a model's MLPs call for GELU: the kernels' where there are kernels, else PyTorch's."""
    return gelu if kernels is None else functools.partial(kernel_gelu, kernels)


def kernel_gelu(kernels: Kernels, x: torch.Tensor) -> torch.Tensor:
    """gelu(x), overwriting x where it is a contiguous fp32 CPU tensor that autograd does not track (the fresh
    output of the product before it); PyTorch's gelu otherwise."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous() or x.requires_grad:
        return gelu(x)
    kernels.lib.gpt2kit_gelu_all(x.data_ptr(), x.numel(), torch.get_num_threads())
    return x
