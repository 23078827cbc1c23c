"""Faster matrix products for CPU inference, measured one lever at a time (benchmarks/kernels.py).

Decoding multiplies a few rows of activations by every weight matrix, once per token. PyTorch's
default CPU path for that (MKL's gemv/gemm on small M) reaches only 13 GB/s on the 2-core AMD EPYC
these figures come from, against 25-38 GB/s the memory can give. The levers, best first:

- gpt2kit's own AVX2 kernels (kernels/matvec.c via native.py): fp32, fp16 or int8 weights streamed
  once in their own order, activations in fp32. A 124M token's matrices at batch 1 in 20-23 ms
  (fp32), 9-11 ms (fp16, 27 GB/s), 5-6 ms (int8), against 27 ms for PyTorch's default path; and
  kernels/decode_step.c runs the rest of the token step too, so no Python runs inside a step.
- oneDNN's inner product (the kernels PyTorch ships as `mkldnn`), on weights reordered once into
  its own blocked layout: the 154 MB output head at batch 1 in 5.2 ms against 12.1 ms.
- where neither is there, (in, out) memory order for every matrix (the same (out, in) tensor,
  transposed storage): MKL reads that 1.6x faster at batch 1 (7.3 ms).

Inference only: the new modules hold no trainable parameters.
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native
from .model import GPT, KVCache, swap_matrices
from .quantize import quantize_weight

# Above this many rows (a long prompt's prefill) a blocked GEMM beats streaming the weights per row pair.
NATIVE_MAX_ROWS = 32


class NativeLinear(nn.Module):
    """y = x W^T + b through kernels/matvec.c, W stored as fp32, fp16, or int8 with per-row scales."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        w = weight.detach().float()
        scales = None
        self.kind = {torch.float32: native.FP32, torch.float16: native.FP16, torch.int8: native.INT8}[dtype]
        if dtype == torch.int8:
            w, scales = quantize_weight(w)
        self.register_buffer("weight", w.to(dtype).contiguous())  # fp32: the same tensor, no copy
        self.register_buffer("scales", None if scales is None else scales.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def dense_weight(self) -> torch.Tensor:
        """The weight as fp32 (N, K): exactly the values the kernels multiply by."""
        w = self.weight.float()
        return w * self.scales[:, None] if self.scales is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float().contiguous()  # (M, K)
        if x2.shape[0] <= NATIVE_MAX_ROWS:
            y = native.linear(x2, self.weight, self.kind, self.scales, self.bias)
        else:
            y = F.linear(x2, self.dense_weight(), self.bias)
        return y.view(*shape[:-1], -1)


class OneDNNLinear(nn.Module):
    """y = x W^T + b with W (out, in) kept in oneDNN's layout; x and y are ordinary tensors."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        weight = weight.detach().float().contiguous()
        # A copy in oneDNN's blocked layout, chosen for one row at a time (decoding's shape).
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, 1))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")


def has_onednn() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def use_onednn(model: GPT) -> GPT:
    """Every Linear, and the tied output head, through oneDNN (in place). Costs one extra copy of wte."""
    return swap_matrices(model, OneDNNLinear)


class NativeStep:
    """GPT.step_kernel: a whole one-token decoding step in one call to kernels/decode_step.c.

    Holds raw pointers to the model's tensors (and references, so they stay alive): the model must
    not be moved to another device or dtype after.
    """

    def __init__(self, model: GPT):
        cfg = model.config
        self.tensors = [t for t in model.state_dict(keep_vars=True).values()]  # keeps the pointed-to memory alive

        def mat(lin: NativeLinear) -> native.MatrixStruct:
            return native.MatrixStruct(lin.weight.data_ptr(), native.address(lin.scales), native.address(lin.bias), lin.kind)

        def ptr(t: torch.Tensor) -> int:
            assert t.dtype == torch.float32 and t.is_contiguous()
            return t.data_ptr()

        self.layers = (native.LayerStruct * cfg.n_layer)(*[
            native.LayerStruct(ptr(b.ln_1.weight), ptr(b.ln_1.bias), mat(b.attn.c_attn), mat(b.attn.c_proj),
                               ptr(b.ln_2.weight), ptr(b.ln_2.bias), mat(b.mlp.c_fc), mat(b.mlp.c_proj))
            for b in model.h])
        self.struct = native.ModelStruct(
            cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_vocab, cfg.layer_norm_epsilon, ptr(model.wte.weight), ptr(model.wpe.weight), ptr(model.ln_f.weight),
            ptr(model.ln_f.bias), mat(model.head), self.layers)
        self.n_vocab = cfg.n_vocab

    def __call__(self, idx: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """idx (B, 1), positions (B, 1) or (1, 1) -> logits (B, 1, n_vocab); writes the cache at cache.length."""
        B = idx.shape[0]
        tokens = idx.reshape(B).to(torch.int64).contiguous()
        pos = positions.expand(B, 1).reshape(B).to(torch.int64).contiguous()
        cache.k, cache.v, cache.valid = cache.k.contiguous(), cache.v.contiguous(), cache.valid.contiguous()
        logits = torch.empty(B, self.n_vocab)
        rc = native.library().gpt2kit_decode_step(
            ctypes.byref(self.struct), tokens.data_ptr(), pos.data_ptr(), B, cache.k.data_ptr(), cache.v.data_ptr(),
            cache.valid.data_ptr(), cache.max_len, cache.length, logits.data_ptr(), torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"gpt2kit_decode_step failed ({rc}) at cache length {cache.length} of {cache.max_len}")
        cache.length += 1
        return logits.view(B, 1, self.n_vocab)


def use_native(model: GPT, dtype: torch.dtype) -> GPT:
    """Every Linear, and the tied output head, through kernels/matvec.c with weights in `dtype`, and
    one-token steps through kernels/decode_step.c (in place)."""
    swap_matrices(model, lambda w, b: NativeLinear(w, b, dtype))
    model.step_kernel = NativeStep(model)
    return model


def store_input_major(model: GPT) -> GPT:
    """Keep every matrix in (in, out) memory order, seen as the same (out, in) tensor (in place)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()
    return model


def speed_up_for_cpu(model: GPT) -> GPT:
    """The fastest measured fp32 path this machine offers; other dtypes are left as they are."""
    if model.wte.weight.dtype != torch.float32:
        return model
    if native.library() is not None:
        return use_native(model, torch.float32)
    if has_onednn():
        return use_onednn(model)
    return store_input_major(model)
