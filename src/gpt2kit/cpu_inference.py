"""Faster fp32 matrix products for CPU inference, measured one lever at a time (benchmarks/kernels.py).

Decoding multiplies a few rows of activations by every weight matrix, once per token. PyTorch's
default CPU path for that (MKL's gemv/gemm on small M) reaches only 13 GB/s on the 2-core AMD EPYC
these figures come from, against 27 GB/s the memory can give. Two levers, kept because they help:

- oneDNN's inner product (the kernels PyTorch ships as `mkldnn`), on weights reordered once into
  its own blocked layout: the 154 MB output head at batch 1 in 5.6 ms against 12.1 ms (27.6 GB/s),
  at batch 8 in 18 ms against 37.
- where oneDNN is missing, (in, out) memory order for every matrix (the same (out, in) tensor,
  transposed storage): MKL reads that 1.6x faster at batch 1 (7.3 ms).

Inference only: the new modules hold no trainable parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .model import GPT, swap_matrices


class OneDNNLinear(nn.Module):
    """y = x W^T + b with W (out, in) kept in oneDNN's layout; x and y are ordinary tensors."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        weight = weight.detach().float().contiguous()
        bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float()
        self.register_buffer("weight", weight.to_mkldnn())  # a copy, in oneDNN's blocked layout
        self.register_buffer("bias", bias.contiguous().to_mkldnn())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch._C._nn.mkldnn_linear(x.contiguous().to_mkldnn(), self.weight, self.bias)
        return y.to_dense()


def use_onednn(model: GPT) -> GPT:
    """Every Linear, and the tied output head, through oneDNN (in place). Costs one extra copy of wte."""
    return swap_matrices(model, OneDNNLinear)


def store_input_major(model: GPT) -> GPT:
    """Keep every matrix in (in, out) memory order, seen as the same (out, in) tensor (in place)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()
    return model


def speed_up_for_cpu(model: GPT) -> GPT:
    """The fastest measured fp32 path this PyTorch build offers; other dtypes are left as they are."""
    if model.wte.weight.dtype != torch.float32:
        return model
    if torch.backends.mkldnn.is_available():
        return use_onednn(model)
    return store_input_major(model)
