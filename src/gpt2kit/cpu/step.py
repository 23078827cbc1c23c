"""A whole one-token decoding step in one call to kernels/decode_step.c.

At batch 1 driving the ~300 small PyTorch operations around a token's ~50 matrix products from
Python (LayerNorm, attention, residuals, ~20 us each) cost about 5 ms a token; in C they cost
almost nothing, so no Python runs inside a step.
"""

from __future__ import annotations

import ctypes

import torch

from ..model import GPT, KVCache
from .kernels import Kernels
from .structs import LayerStruct, MatrixStruct, ModelStruct, address, fp32_address
from .weights import KernelLinear


def _matrix(lin: KernelLinear) -> MatrixStruct:
    return MatrixStruct(lin.weight.data_ptr(), address(lin.scales), address(lin.bias), lin.kind)


class KernelStep:
    """Holds raw pointers to the model's tensors (and references, so they stay alive): the model must
    not be moved to another device or dtype after."""

    def __init__(self, kernels: Kernels, gpt: GPT, head: KernelLinear):
        cfg = gpt.config
        self.kernels, self.n_vocab, self.n_ctx = kernels, cfg.n_vocab, cfg.n_ctx
        self._every: dict[int, torch.Tensor] = {}  # B -> arange(B), the rows of a step over every cache row
        self.cache_dims = (cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head)  # KVCache's (L, ., nh, ., hs)
        self.tensors = list(gpt.state_dict(keep_vars=True).values()) + [head.weight]  # keeps the memory alive
        for b in gpt.h:
            for lin in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj):
                if not isinstance(lin, KernelLinear):
                    raise TypeError(f"KernelStep needs every matrix as a KernelLinear, got {type(lin).__name__}")
        self.layers = (LayerStruct * cfg.n_layer)(
            *[
                LayerStruct(
                    fp32_address(b.ln_1.weight),
                    fp32_address(b.ln_1.bias),
                    _matrix(b.attn.c_attn),
                    _matrix(b.attn.c_proj),
                    fp32_address(b.ln_2.weight),
                    fp32_address(b.ln_2.bias),
                    _matrix(b.mlp.c_fc),
                    _matrix(b.mlp.c_proj),
                )
                for b in gpt.h
            ]
        )
        self.struct = ModelStruct(
            cfg.n_layer,
            cfg.n_embd,
            cfg.n_head,
            cfg.n_vocab,
            cfg.layer_norm_epsilon,
            fp32_address(gpt.wte.weight),
            fp32_address(gpt.wpe.weight),
            fp32_address(gpt.ln_f.weight),
            fp32_address(gpt.ln_f.bias),
            _matrix(head),
            self.layers,
        )

    def __call__(
        self, idx: torch.Tensor, positions: torch.Tensor, cache: KVCache, slots: torch.Tensor | None = None
    ) -> torch.Tensor:
        """idx (B, 1), positions (B, 1) or (1, 1) -> logits (B, 1, n_vocab); writes the cache at cache.length.
        slots (B,): each row's row of the cache, when the cache holds more (rows that left are skipped);
        default: row i is the cache's row i."""
        B = idx.shape[0]
        tokens = idx.reshape(B).to(torch.int64).contiguous()
        pos = positions.expand(B, 1).reshape(B).to(torch.int64).contiguous()
        rows = (
            self._every.setdefault(B, torch.arange(B))
            if slots is None
            else slots.reshape(B).to(torch.int64).contiguous()
        )
        cache.k, cache.v, cache.valid = cache.k.contiguous(), cache.v.contiguous(), cache.valid.contiguous()
        self._check(tokens, pos, rows, cache)
        logits = torch.empty(B, self.n_vocab)
        rc = self.kernels.lib.gpt2kit_decode_step(
            ctypes.byref(self.struct),
            tokens.data_ptr(),
            pos.data_ptr(),
            rows.data_ptr(),
            B,
            cache.k.shape[1],
            cache.k.data_ptr(),
            cache.v.data_ptr(),
            int(cache.k.dtype == torch.float16),
            cache.valid.data_ptr(),
            cache.max_len,
            cache.length,
            logits.data_ptr(),
            torch.get_num_threads(),
        )
        if rc != 0:
            raise RuntimeError(f"gpt2kit_decode_step failed ({rc}) at cache length {cache.length} of {cache.max_len}")
        cache.length += 1
        return logits.view(B, 1, self.n_vocab)

    def _check(self, tokens: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor, cache: KVCache) -> None:
        """What the C step indexes with, checked here: it reads wte[token] and wpe[position] and writes
        the cache with no bounds of its own."""
        B, Bc, (L, nh, hs) = tokens.shape[0], cache.k.shape[1], self.cache_dims
        if (
            cache.k.dtype not in (torch.float32, torch.float16)
            or cache.v.dtype != cache.k.dtype
            or cache.k.device.type != "cpu"
            or cache.k.shape != (L, Bc, nh, cache.max_len, hs)
            or cache.v.shape != cache.k.shape
            or cache.valid.shape != (Bc, cache.max_len)
            or cache.valid.dtype != torch.bool
        ):
            raise ValueError(
                f"KernelStep: a cache of {tuple(cache.k.shape)} {cache.k.dtype} for {B} rows of a model with "
                f"(n_layer, n_head, head size) {self.cache_dims}"
            )
        if B == Bc and rows is self._every.get(B):
            return  # the default: row i at row i
        if B > Bc or int(rows.min()) < 0 or int(rows.max()) >= Bc or len(set(rows.tolist())) != B:
            raise ValueError(f"KernelStep: cache rows {rows.tolist()} for a cache of {Bc} rows (each at most once)")
        if (
            int(tokens.min()) < 0
            or int(tokens.max()) >= self.n_vocab
            or int(pos.min()) < 0
            or int(pos.max()) >= self.n_ctx
        ):
            raise ValueError(
                f"KernelStep: token ids {tokens.tolist()} or positions {pos.tolist()} out of range "
                f"(n_vocab {self.n_vocab}, n_ctx {self.n_ctx})"
            )
