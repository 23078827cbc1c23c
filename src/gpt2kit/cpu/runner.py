"""CpuGPT: what `gpt2kit.load` returns as `lm.model` on a CPU.

The reference GPT (gpt2kit/model.py) with its four matrices per block replaced by the chosen
path's modules (weights.py), an output head of the same kind, and, on the kernels' path, whole
one-token steps in C (step.py). It takes and returns what GPT does, so decoding, the server and
the tests call it the same way; `reference` is the GPT inside, `path` says which path it is.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import GPTConfig
from ..formats.mapped import release
from ..model import GPT, KVCache
from .step import KernelStep

MakeLinear = Callable[[torch.Tensor, torch.Tensor | None], nn.Module]


def block_matrices(block: nn.Module) -> list[tuple[nn.Module, str]]:
    """A block's four matrices as (parent module, attribute name): c_attn, attn.c_proj, c_fc, mlp.c_proj."""
    return [(block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")]


def swap_matrices(gpt: GPT, make: MakeLinear, *, release_sources: bool = False) -> nn.Module:
    """Replace every block's Linear by make(weight (out, in), bias or None), in place; returns the
    output head made the same way from wte (tied, as in GPT-2). The embedding lookup keeps wte as it is.

    release_sources: give back each replaced matrix's pages (formats.release) as soon as its new form
    exists, so converting a memory-mapped model holds one source matrix at a time, not all of them.
    """
    for block in gpt.h:
        for parent, name in block_matrices(block):
            lin = getattr(parent, name)
            new = make(lin.weight, lin.bias)
            setattr(parent, name, new)
            if release_sources:
                kept = {_storage(t) for t in (*new.buffers(), *new.parameters())}
                for t in (lin.weight, lin.bias):
                    if t is not None and _storage(t) not in kept:  # not the same memory, still in use
                        release(t)
    # The head reads all of wte (a third of 124M's bytes) each token; the embedding lookup reads one row.
    return make(gpt.wte.weight, None)


def _storage(t: torch.Tensor) -> int | None:
    """Where t's memory starts, or None for layouts without a plain storage (oneDNN's blocked weights)."""
    try:
        return t.untyped_storage().data_ptr()
    except (NotImplementedError, RuntimeError):
        return None


class CpuGPT(nn.Module):
    def __init__(self, reference: GPT, head: nn.Module | None, step: KernelStep | None, path: str):
        super().__init__()
        self.reference, self.head, self.step, self.path = reference.eval(), head, step, path

    @property
    def config(self) -> GPTConfig:
        return self.reference.config

    @property
    def cache_dtype(self) -> torch.dtype:
        return self.reference.cache_dtype

    @property
    def wte(self) -> nn.Embedding:
        return self.reference.wte

    def num_params(self) -> int:
        return self.reference.num_params()

    def decode_rows(
        self, idx: torch.Tensor, positions: torch.Tensor, cache: KVCache, slots: torch.Tensor
    ) -> torch.Tensor | None:
        """One token for some rows of `cache` only: idx, positions (M, 1), slots (M,) their cache rows ->
        logits (M, 1, n_vocab). None where this path has no C step (PyTorch then runs every cache row)."""
        return None if self.step is None else self.step(idx, positions, cache, slots)

    @torch.no_grad()
    def forward(
        self,
        idx: torch.Tensor,
        *,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        hidden_only: bool = False,
        last_only: bool = False,
        lengths: list[int] | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, n_vocab) (or (B, 1, ...) with last_only), as GPT.forward."""
        one_token = cache is not None and idx.shape[1] == 1 and lengths is None
        if self.step is not None and one_token and not hidden_only:
            if positions is None:
                positions = torch.full((1, 1), cache.length, dtype=torch.long)
            return self.step(idx, positions, cache)  # (B, 1, n_vocab)
        x = self.reference(
            idx, cache=cache, positions=positions, hidden_only=True, last_only=last_only, lengths=lengths
        )  # (B, T, C)
        if hidden_only:
            return x
        if self.head is None:
            return F.linear(x, self.reference.wte.weight)
        return self.head(x)
