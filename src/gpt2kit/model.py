"""GPT-2 in PyTorch, numerically OpenAI's model, with a preallocated KV cache.

Parameter names are GPT-2's own (wte, wpe, h.N.ln_1, attn.c_attn, attn.c_proj, mlp.c_fc,
mlp.c_proj, ln_f), so every checkpoint format maps onto it key for key. Linear weights are
stored PyTorch-style as (out, in); the formats module transposes TF's and HF's (in, out).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import GPTConfig


class Linear(nn.Linear):
    """nn.Linear without PyTorch's random init: a checkpoint or GPT.init_weights sets every weight, so
    drawing kaiming-uniform numbers first (85M of them for 124M) would only cost start-up time."""

    def reset_parameters(self) -> None:
        pass


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm left uninitialised, for the same reason as Linear."""

    def reset_parameters(self) -> None:
        pass


class KVCache:
    """Keys and values of every layer for up to `max_len` positions, allocated once.

    `valid` marks the real (non left-padding) positions of each row, so prompts of different
    lengths can share one batch.
    """

    def __init__(self, config: GPTConfig, batch: int, max_len: int, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch, config.n_head, max_len, hs)  # (L, B, nh, S, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.ones(batch, max_len, device=device, dtype=torch.bool)
        self.length = 0
        self.max_len = max_len
        self.padded = False  # True once some row has padding: then masks are needed

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (finished samples leave, the rest go on)."""
        self.k, self.v, self.valid = self.k[:, rows], self.v[:, rows], self.valid[rows]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        # The cache's element type where it is not the activations': then keys and values are rounded to
        # it, with a cache or without one (so a check without a cache sees what decoding computes).
        self.kv_dtype: torch.dtype | None = None

    def forward(self, x, cache: KVCache | None, layer: int, mask, segments: list[tuple[int, int]] | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k = cache.k[layer, :, :, : start + T].to(q.dtype)  # (B, nh, S, hs)
            v = cache.v[layer, :, :, : start + T].to(q.dtype)
        elif self.kv_dtype is not None:
            k, v = k.to(self.kv_dtype).to(q.dtype), v.to(self.kv_dtype).to(q.dtype)
        dropout = self.dropout if self.training else 0.0
        if segments is not None:
            y = _within_each(q, k, v, segments)
        elif mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        elif cache is not None and T == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # one query sees all keys
        else:
            # Without padding the prefix of the cache is empty, so plain causal masking is right.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return F.dropout(self.c_proj(y), dropout, self.training)


def _within_each(q, k, v, segments: list[tuple[int, int]]) -> torch.Tensor:
    """Causal attention for prompts back to back in one row (q, k, v (1, nh, T, hs)), each attending within
    its own columns (a, b) only -> (1, nh, T, hs). Prompts of one length run as a batch of rows, in one call."""
    _, nh, T, hs = q.shape
    n = segments[0][1] - segments[0][0]
    if all(b - a == n for a, b in segments):

        def rows(t):  # (1, nh, T, hs) -> (prompts, nh, n, hs)
            return t.view(nh, len(segments), n, hs).transpose(0, 1)

        y = F.scaled_dot_product_attention(rows(q), rows(k), rows(v), is_causal=True)  # (prompts, nh, n, hs)
        return y.transpose(0, 1).reshape(1, nh, T, hs)
    parts = [
        F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True) for a, b in segments
    ]
    return torch.cat(parts, dim=2)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU: the tanh approximation (OpenAI's model.py `gelu`)."""
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.dropout = config.dropout
        # The same function computed another way where a CPU path has a faster one (gpt2kit.cpu.gelu).
        self.gelu: Callable[[torch.Tensor], torch.Tensor] = gelu

    def forward(self, x):
        x = self.c_proj(self.gelu(self.c_fc(x)))
        return F.dropout(x, self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0, mask=None, segments=None):
        x = x + self.attn(self.ln_1(x), cache, layer, mask, segments)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # Every weight is left uninitialised (PyTorch's default init would be overwritten by a checkpoint or
        # init_weights anyway). Under build_model's meta device the embeddings' N(0, 1) init imported
        # torch._dynamo: 2.5 s of a 3 s `gpt2kit generate`; the Linear inits cost 10 ms more.
        self.wte = nn.Embedding(config.n_vocab, config.n_embd, _weight=torch.empty(config.n_vocab, config.n_embd))
        self.wpe = nn.Embedding(config.n_ctx, config.n_embd, _weight=torch.empty(config.n_ctx, config.n_embd))
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """GPT-2's initialisation (a new GPT holds uninitialised embeddings until this or a checkpoint): N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name or name.startswith("ln_f"):
                nn.init.ones_(p)
            else:
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj.weight") else 0.02
                with torch.no_grad():
                    p.normal_(0.0, std, generator=generator)

    @property
    def cache_dtype(self) -> torch.dtype:
        """The element type of this model's KV cache."""
        return self.h[0].attn.kv_dtype or self.wte.weight.dtype

    def num_params(self) -> int:
        """GPT-2's parameter count (wte counted once), from the config: also right after gpt2kit.cpu swaps the matrices."""
        C, L = self.config.n_embd, self.config.n_layer
        # Per block: ln_1 2C, c_attn 3C^2+3C, c_proj C^2+C, ln_2 2C, c_fc 4C^2+4C, mlp.c_proj 4C^2+C.
        return (self.config.n_vocab + self.config.n_ctx) * C + L * (12 * C * C + 13 * C) + 2 * C

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
        """idx (B, T) token ids -> logits (B, T, n_vocab), or the final hidden states (B, T, C).

        last_only: only the last position's (B, 1, ...), as sampling needs; the output head is a
        third of 124M's weights, so a prompt's prefill skips it for all other positions.
        lengths: idx (1, T) is whole prompts of these lengths back to back (T = their sum), an empty
        cache (if any) their row: each prompt's positions start at 0 and it attends within itself only,
        and last_only gives each one's last position, (1, len(lengths), ...).
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        segments = None
        if lengths is not None:
            if B != 1 or sum(lengths) != T or min(lengths, default=0) < 1 or start or positions is not None:
                raise ValueError(f"prompts back to back: one row of {T} tokens, an empty cache, lengths {lengths}")
            if self.training:  # checkpointed blocks and dropout are not wired for it: inference only
                raise ValueError("prompts back to back are for inference (model.eval())")
            ends = list(itertools.accumulate(lengths))
            segments = list(zip([0] + ends[:-1], ends))
            positions = torch.cat([torch.arange(n, device=idx.device) for n in lengths]).unsqueeze(0)  # (1, T)
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device).unsqueeze(0)  # (1, T)
        x = self.wte(idx) + self.wpe(positions)  # (B, T, C)
        x = F.dropout(x, self.config.dropout, self.training)
        mask = None
        if cache is not None and cache.padded:
            # Row b's query at cache position q sees key j iff j <= q and j is not padding.
            q_idx = torch.arange(start, start + T, device=idx.device)
            k_idx = torch.arange(start + T, device=idx.device)
            causal = k_idx[None, :] <= q_idx[:, None]  # (T, S)
            # A padding query still sees itself, so no softmax row is empty (that would be NaN).
            itself = k_idx[None, :] == q_idx[:, None]  # (T, S)
            mask = causal[None] & (cache.valid[:, None, : start + T] | itself[None])  # (B, T, S)
            mask = mask.unsqueeze(1)  # (B, 1, T, S)
        for layer, block in enumerate(self.h):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache, layer, mask, segments)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:] if segments is None else x[:, [b - 1 for _, b in segments]]  # (B, 1, C) or (1, k, C)
        x = self.ln_f(x)
        if hidden_only:
            return x
        return F.linear(x, self.wte.weight)  # the output head is tied to wte, as in GPT-2
