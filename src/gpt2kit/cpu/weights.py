"""The matrices of a CPU model: the weight formats the C kernels read, and PyTorch's own fast paths.

Decoding multiplies a few rows of activations by every weight matrix, once per token, so it is
bound by reading the weights: their bytes decide the speed. The formats (kernels/matvec.c's `kind`):

- float32: 4 bytes a weight, exactly the model.
- float16 / bfloat16: 2 bytes, widened to fp32 in registers (F16C / a 16-bit shift); arithmetic fp32.
- int8: 1 byte, one fp32 scale per output row (symmetric, round to nearest); arithmetic fp32.
- int8a8 (AVX512-VNNI builds): int8 weights as above, times activations quantized to int8 per row,
  int32 sums (vpdpbusd). bfloat16a16 (AVX512-BF16 builds): bf16 weights times activations rounded
  to bf16, fp32 sums (vdpbf16ps). Both change the arithmetic, so `--dtype auto` takes them only where
  they measure faster and keep fp32's answers.

Where the kernels cannot be built, PyTorch does the work: oneDNN's inner product on a pre-reordered
fp32 copy (the 154 MB output head at batch 1 in 5.2 ms against 12.1 ms for PyTorch's default), or
PyTorch's int8-weight kernel (`torch._weight_int8pack_mm`, the one gpt-fast uses on CPU).

Inference only: the modules hold no trainable parameters.
"""

from __future__ import annotations

import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import KINDS, Kernels

STORAGE = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int8": torch.int8,
    "bfloat16": torch.bfloat16,
    "int8a8": torch.int8,
    "bfloat16a16": torch.bfloat16,
}
# Kinds whose arithmetic differs from fp32 on the stored weights: the kernels run every row count,
# prompts included, so a model computes the same way whatever the batch.
ALWAYS_KERNELS = {"int8a8", "bfloat16a16"}
# Up to this many rows (a short prompt's prefill) the kernels beat widening the weights for PyTorch's blocked
# GEMM; above it the GEMM wins. Per format: the widening the GEMM needs first costs more for the reduced formats,
# and none for fp32 (docs/performance.md has the crossovers measured; these sit below them).
KERNEL_MAX_ROWS = {"float32": 32, "float16": 64, "bfloat16": 64, "int8": 64}


# Conversions run over blocks of about this many weights, so their fp32 temporary stays small (4 MB) next
# to the model: quantizing 1558M's output head at once would take three 322 MB temporaries.
BLOCK_WEIGHTS = 1 << 20
# A prompt's GEMMs widen this many weights at a time (16 MB of fp32): every matrix of 124M-774M in one
# GEMM, 1558M's largest in three. Smaller blocks cost GEMM speed (264 tokens through 124M's fp16 blocks of
# 1M weights took 0.92 s, against 0.59 s for PyTorch on the fp32 model).
PREFILL_BLOCK_WEIGHTS = 1 << 22


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float (any strides) -> (out, in) int8 and (out,) scales with w ~= q * scales[:, None].

    Row blocks at a time, in place on one fp32 copy of the block: each row's scale and rounding depend
    on that row alone, so this equals round(w / (max|w| / 127)) on the whole matrix at once.
    """
    N, K = w.shape
    q, scales = torch.empty(N, K, dtype=torch.int8), torch.empty(N)
    rows = max(1, BLOCK_WEIGHTS // max(K, 1))
    for r in range(0, N, rows):
        block = torch.empty(min(rows, N - r), K).copy_(w[r : r + rows].detach())  # (rows, K) fp32, our own copy
        s = torch.maximum(block.amax(dim=1), -block.amin(dim=1)).clamp(min=1e-12) / 127.0  # max |w| per row
        q[r : r + rows] = block.div_(s[:, None]).round_().clamp_(-127, 127)
        scales[r : r + rows] = s
    return q, scales


def stored(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """weight (out, in) in format `fmt`: (stored tensor, per-row scales or None)."""
    if fmt in ("int8", "int8a8"):
        q, scales = quantize_weight(weight)
        if fmt == "int8a8":  # (2, N): the scales, then each row's sum of its int8 weights (exact in fp32)
            scales = torch.cat([scales, q.sum(dim=1, dtype=torch.int32).float()])
        return q.contiguous(), scales.float().contiguous()
    weight = weight.detach()
    if weight.dtype == STORAGE[fmt] and weight.is_contiguous():
        return weight, None  # fp32 in, fp32 out: the same tensor
    # One allocation in the final dtype and layout, filled straight from the source (a transposed view
    # of a mapped file): no intermediate contiguous or fp32 copy.
    return torch.empty(weight.shape, dtype=STORAGE[fmt]).copy_(weight), None


def dense(weight: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """A stored weight back as fp32 (N, K): exactly the values the kernels multiply by."""
    w = weight.float()
    return w * scales[: w.shape[0], None] if scales is not None else w


class KernelLinear(nn.Module):
    """y = x W^T + b through kernels/matvec.c, W stored in one of KINDS' formats."""

    def __init__(self, kernels: Kernels, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str):
        super().__init__()
        self.kernels, self.fmt, self.kind = kernels, fmt, KINDS[fmt]
        self.max_kernel_rows = None if fmt in ALWAYS_KERNELS else KERNEL_MAX_ROWS[fmt]
        w, scales = stored(weight, fmt)
        self.register_buffer("weight", w)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def dense_weight(self) -> torch.Tensor:
        return dense(self.weight, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float().contiguous()  # (M, K)
        if self.max_kernel_rows is None or x2.shape[0] <= self.max_kernel_rows:
            y = kernel_linear(self.kernels, x2, self.weight, self.kind, self.scales, self.bias)
        else:
            y = self._blocked_gemm(x2)
        return y.view(*shape[:-1], -1)

    def _blocked_gemm(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, K) @ W^T + b for many rows (a prompt): fp32 GEMMs over blocks of W's rows widened one
        block at a time, so a prompt never holds an fp32 copy of a whole matrix (1558M's c_fc: 41 MB)."""
        N, K = self.weight.shape
        if self.scales is None and self.weight.dtype == torch.float32:
            return F.linear(x, self.weight, self.bias)  # nothing to widen: one GEMM
        rows = max(1, PREFILL_BLOCK_WEIGHTS // K)
        scratch = _scratch(min(rows, N) * K)
        outs = [self._block_product(x, scratch, r, rows) for r in range(0, N, rows)]  # each (M, <= rows)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _block_product(self, x: torch.Tensor, scratch: torch.Tensor, r: int, rows: int) -> torch.Tensor:
        """x @ W[r:r + rows]^T + b[r:r + rows], the block widened into `scratch` (dense()'s values)."""
        w = self.weight[r : r + rows]
        wide = scratch[: w.numel()].view(w.shape).copy_(w)  # (rows, K) fp32
        if self.scales is not None:
            wide.mul_(self.scales[r : r + rows, None])  # int8's per-row scales
        return F.linear(x, wide, None if self.bias is None else self.bias[r : r + rows])


_scratches = threading.local()


def _scratch(n: int) -> torch.Tensor:
    """n fp32 values of memory this thread reuses for widening prompt GEMMs' weight blocks: a fresh 16 MB
    block each time would be fresh pages, and faulting them in cost more than the widening itself."""
    buf = getattr(_scratches, "buf", None)
    if buf is None or buf.numel() < n:
        # A normal tensor even when first asked for under inference_mode (generation), or a later prompt
        # pass outside it (a script's no_grad forward after a generate) could not write into it.
        with torch.inference_mode(False):
            buf = _scratches.buf = torch.empty(n)
    return buf[:n]


def kernel_linear(
    kernels: Kernels,
    x: torch.Tensor,
    weight: torch.Tensor,
    kind: int,
    scales: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """x (M, K) fp32 @ weight (N, K)^T + bias (N,) -> (M, N) fp32, all contiguous on the CPU."""
    M, K = x.shape
    N = weight.shape[0]
    if weight.shape[1] != K or not (x.is_contiguous() and weight.is_contiguous()) or x.dtype != torch.float32:
        raise ValueError(f"kernel_linear: x {tuple(x.shape)} {x.dtype} against weight {tuple(weight.shape)}")
    # read by address: fp32, one per output row (int8a8's scales: a second row of N, each row's sum)
    for name, v, sizes in (("scales", scales, (N, 2 * N)), ("bias", bias, (N,))):
        if v is not None and (v.numel() not in sizes or v.dtype != torch.float32 or not v.is_contiguous()):
            raise ValueError(f"kernel_linear: {name} {tuple(v.shape)} {v.dtype} for {N} output rows")
    y = torch.empty(M, N, dtype=torch.float32)
    rc = kernels.lib.gpt2kit_linear(
        x.data_ptr(),
        M,
        K,
        weight.data_ptr(),
        N,
        kind,
        None if scales is None else scales.data_ptr(),
        None if bias is None else bias.data_ptr(),
        0,
        y.data_ptr(),
        torch.get_num_threads(),
    )
    if rc != 0:
        raise ValueError(f"gpt2kit_linear failed ({rc}): x {tuple(x.shape)}, weight {tuple(weight.shape)} kind {kind}")
    return y


class TorchInt8Linear(nn.Module):
    """int8 weights through PyTorch's own int8-weight kernel, fed bf16 activations (its fast x86 path)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        q, scales = quantize_weight(weight)
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight, self.scales)
        y = y.to(x.dtype).reshape(*shape[:-1], -1)
        return y + self.bias if self.bias is not None else y


class OneDNNLinear(nn.Module):
    """y = x W^T + b with W (out, in) kept in oneDNN's blocked layout; x and y are ordinary tensors."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        weight = weight.detach().float().contiguous()
        # A copy in oneDNN's blocked layout, chosen for one row at a time (decoding's shape).
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, 1))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")


def has_onednn() -> bool:
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class InputMajorLinear(nn.Module):
    """y = x W^T + b with W (out, in) stored in (in, out) memory order: MKL reads that 1.6x faster at
    batch 1 than the default order. The last resort, where neither the kernels nor oneDNN are there."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().t().contiguous().t())
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class BF16Linear(nn.Module):
    """bf16 (or fp16) weights and arithmetic through PyTorch (oneDNN, AMX where there): fast only on
    CPUs with native bf16; activations go in and come out fp32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).float()
