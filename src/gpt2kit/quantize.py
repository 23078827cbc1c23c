"""Weight-only int8 for inference (`--dtype int8`): a quarter of fp32's bytes per generated token.

Batch-1 decoding reads every weight once per token, so it is bound by memory bandwidth; int8
weights with one fp32 scale per output channel (symmetric, round to nearest) cut those bytes 4x.
Activations stay in floating point. The matmul is PyTorch's own int8-weight kernel
(`torch._weight_int8pack_mm`, the one gpt-fast uses on CPU), fed bf16 activations, which is the
fast path of that kernel on x86; the benchmark reports the fidelity against fp32.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .model import GPT, swap_matrices


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> (out, in) int8 and (out,) scales with w ~= q * scales[:, None]."""
    w = w.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        q, scales = quantize_weight(weight)
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight, self.scales)
        y = y.to(x.dtype).reshape(*shape[:-1], -1)
        return y + self.bias if self.bias is not None else y


def quantize_int8(model: GPT) -> GPT:
    """Replace every Linear and the tied output head with int8 weights (in place; inference only)."""
    return swap_matrices(model, Int8Linear)
