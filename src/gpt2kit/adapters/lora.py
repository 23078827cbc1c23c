"""LoRA (Hu et al. 2021, arXiv:2106.09685): a frozen matrix W plus a trained low-rank update.

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r)

B starts at zero, so a new adapter leaves the model exactly as it was; A starts as PEFT's does
(Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))). Only A and B train: the frozen
matrices need no gradient buffers, no optimizer moments and no weight-gradient matmuls in backward
(2 of the 6 FLOPs per parameter and token of full fine-tuning, the tied output head's included),
which is where LoRA's speed and memory come from.

`LoraLinear` wraps any module that maps (..., in) -> (..., out): a `FrozenLinear` while training.
To run an adapter, `load(..., adapter=)` merges it into the weights in memory (`merge_into`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import GPTConfig
from ..formats.mapped import release
from .names import MATRICES, targeted


def matrix_shape(config: GPTConfig, matrix: str) -> tuple[int, int]:
    """(in_features, out_features) of `matrix` (a MATRICES key) in a model of `config`."""
    fan_in, fan_out = MATRICES[matrix]
    return fan_in * config.n_embd, fan_out * config.n_embd


@dataclass(frozen=True)
class LoraSpec:
    """A new adapter's shape: rank r, alpha (the update is scaled by alpha / r), dropout, targets."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def matrices(self) -> list[str]:
        return targeted(self.targets)


@dataclass
class LoraWeights:
    """One matrix's adapter: A (r, in), B (out, r), and the scale of B A."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float


@dataclass
class Adapter:
    """A whole adapter in gpt2kit's names: {"h.0.attn.c_attn": LoraWeights, ...}."""

    modules: dict[str, LoraWeights]
    dropout: float = 0.0
    spec: LoraSpec | None = None  # how it was made, where gpt2kit made it
    notes: list[str] = field(default_factory=list)


def new_adapter(config: GPTConfig, spec: LoraSpec, generator: torch.Generator) -> Adapter:
    """A fresh adapter for every targeted matrix: A as PEFT initialises it, B zero."""
    modules = {}
    for layer in range(config.n_layer):
        for matrix in spec.matrices():
            fan_in, fan_out = matrix_shape(config, matrix)
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) on (r, in), as nn.Linear and PEFT
            A = torch.empty(spec.rank, fan_in).uniform_(-bound, bound, generator=generator)
            modules[f"h.{layer}.{matrix}"] = LoraWeights(A, torch.zeros(fan_out, spec.rank), spec.scaling)
    return Adapter(modules, spec.dropout, spec)


class _WidenedLinear(torch.autograd.Function):
    """y = x W^T + b with W stored narrower than x: widened for the product, and again in backward.

    Plain `F.linear(x, W.to(x.dtype))` makes autograd keep the widened copy until backward, so every
    matrix of a bf16/fp16 base was held a second time in fp32 for the whole step: 340 MB at 124M
    (measured with saved_tensors_hooks), more than the narrow base saved. Here autograd keeps only the
    narrow W (no new memory) and backward widens it once more, a conversion per matrix as cheap as a
    copy. W and b are frozen: no gradient for them.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if ctx.needs_input_grad[0]:  # the first block's input (frozen embeddings) needs none
            ctx.save_for_backward(w)
        return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (w,) = ctx.saved_tensors
        return grad_y @ w.to(grad_y.dtype), None, None  # (..., out) @ (out, in) -> (..., in)


class FrozenLinear(nn.Module):
    """A frozen nn.Linear whose weight may be stored narrower (bf16/fp16) than the arithmetic.

    Outside autocast the weight is widened to the input's dtype for each product (_WidenedLinear), so a
    half-width base costs half the memory and computes in fp32 (a CPU without native bf16 emulates bf16
    arithmetic, many times slower). Under autocast (GPUs) autocast picks the dtype itself.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        source = linear.weight.detach()
        weight = source.to(dtype)
        if dtype == torch.float16 and not torch.isfinite(weight).all() and torch.isfinite(source).all():
            weight = source.to(torch.bfloat16)  # values beyond fp16's +-65504: bf16 has fp32's range
        self.weight = nn.Parameter(weight, requires_grad=False)  # (out, in)
        if self.weight.data_ptr() != source.data_ptr():
            release(source)  # a view of the checkpoint file: its fp32 pages are not needed any more
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            return F.linear(x, self.weight, self.bias)
        return _WidenedLinear.apply(x, self.weight, self.bias)


class LoraLinear(nn.Module):
    """base(x) + scaling * dropout(x) A^T B^T, with A and B the trainable parameters."""

    def __init__(self, base: nn.Module, weights: LoraWeights, dropout: float, trainable: bool):
        super().__init__()
        self.base, self.scaling, self.dropout = base, weights.scaling, dropout
        device = next((t.device for t in base.parameters()), None) or next((t.device for t in base.buffers()), "cpu")
        self.lora_A = nn.Parameter(weights.A.detach().float().clone().to(device), requires_grad=trainable)  # (r, in)
        self.lora_B = nn.Parameter(weights.B.detach().float().clone().to(device), requires_grad=trainable)  # (out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = F.dropout(x, self.dropout, self.training) if self.dropout else x
        h = F.linear(F.linear(h, self.lora_A.to(h.dtype)), self.lora_B.to(h.dtype))  # (..., r) then (..., out)
        return y + (h * self.scaling).to(y.dtype)

    def weights(self) -> LoraWeights:
        return LoraWeights(self.lora_A.detach(), self.lora_B.detach(), self.scaling)


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """'h.3.attn.c_attn' -> (model.h[3].attn, 'c_attn')."""
    *parents, name = path.split(".")
    module = model
    for p in parents:
        module = module[int(p)] if p.isdigit() else getattr(module, p)
    return module, name


def freeze_base(model: nn.Module, dtype: torch.dtype) -> None:
    """Freeze every parameter; store the blocks' matrices in `dtype` (embeddings and norms stay fp32)."""
    model.requires_grad_(False)
    for layer in range(len(model.h)):
        for matrix in MATRICES:
            parent, name = _parent(model, f"h.{layer}.{matrix}")
            lin = getattr(parent, name)
            if isinstance(lin, nn.Linear):
                setattr(parent, name, FrozenLinear(lin, dtype))


def apply_adapter(model: nn.Module, adapter: Adapter, *, trainable: bool = False) -> list[nn.Parameter]:
    """Wrap each adapted matrix of `model` (a GPT, or a CpuGPT's reference) in a LoraLinear, in place.

    Returns the adapter's parameters in a fixed order (layer, then matrix, A before B), the order
    an optimizer's saved state refers to.
    """
    params = []
    for path, weights in adapter.modules.items():
        parent, name = _parent(model, path)
        lora = LoraLinear(getattr(parent, name), weights, adapter.dropout, trainable)
        lora.train(parent.training)
        setattr(parent, name, lora)
        params += [lora.lora_A, lora.lora_B]
    return params


def adapter_of(model: nn.Module, spec: LoraSpec | None = None, dropout: float = 0.0) -> Adapter:
    """The adapter inside `model` as it is now (for saving)."""
    modules = {name: m.weights() for name, m in model.named_modules() if isinstance(m, LoraLinear)}
    return Adapter(modules, spec.dropout if spec else dropout, spec)


def merge_into(state_dict: dict[str, torch.Tensor], adapter: Adapter) -> None:
    """W += scaling * B A for every adapted matrix of a gpt2kit state dict ((out, in) weights), in place.

    The sums are new tensors, computed in fp32; an old weight mapped from its file gives its pages back
    once read, so merging holds the adapted matrices once, not twice."""
    for path, weights in adapter.modules.items():
        key = f"{path}.weight"
        w = state_dict[key]
        B, A = weights.B.float().to(w.device), weights.A.float().to(w.device)
        state_dict[key] = torch.addmm(w.float(), B, A, alpha=weights.scaling).to(w.dtype)  # one new tensor
        release(w)
