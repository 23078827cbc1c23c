"""The levers behind gpt2kit's CPU decoding, one at a time: GPT-2 124M's output head (50257 x 768).

    python benchmarks/kernels.py

Decoding multiplies B rows of activations by each weight matrix once per token; the head is the
largest (154 MB in fp32). Prints milliseconds and effective GB/s of weight read for each way
PyTorch offers to do it, and for gpt2kit's own kernels (kernels/matvec.c) in each weight format and
for each instruction set this CPU runs (AVX2; AVX-512 where present), at batch 1 and 8.
"""

import time

import torch
import torch.nn.functional as F

from gpt2kit.cpu import features, kernels
from gpt2kit.cpu.weights import KernelLinear, OneDNNLinear, quantize_weight


def bench(f, n: int = 20) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


def main() -> None:
    torch.manual_seed(0)
    W = torch.randn(50257, 768) * 0.02  # (out, in), as nn.Linear and gpt2kit store it
    q, scales = quantize_weight(W)
    scales = scales.to(torch.bfloat16)
    ways = {
        "fp32, MKL, (out, in) order (PyTorch's default)": (lambda x: F.linear(x, W), 4),
        "fp32, MKL, (in, out) order": (lambda x, Wt=W.t().contiguous().t(): F.linear(x, Wt), 4),
        "fp32, oneDNN on prepacked weights": (lambda x, lin=OneDNNLinear(W, None): lin(x), 4),
        "int8 weights, bf16 activations (PyTorch's int8)": (
            lambda x: torch._weight_int8pack_mm(x.to(torch.bfloat16), q, scales),
            1,
        ),
    }
    here = features.detect()
    isas = [features.CpuInfo(here.machine, here.system, here.model, here.cores, here.flags - features.AVX512)]
    if here.avx512:
        isas.append(here)
    for cpu in isas:
        k = kernels.load(cpu)
        if k is None:
            continue
        for fmt, nbytes in (("float32", 4), ("float16", 2), ("bfloat16", 2), ("int8", 1)):
            ways[f"{fmt}, gpt2kit's kernels, {k.isa}"] = (lambda x, lin=KernelLinear(k, W, None, fmt): lin(x), nbytes)
    if torch.backends.cpu.get_cpu_capability() != "AVX2":  # bf16 is emulated, dozens of times slower, on AVX2
        ways["bf16, (out, in)"] = (lambda x, Wb=W.bfloat16(): F.linear(x.bfloat16(), Wb), 2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    print(features.detect().describe())
    print(f"{'way':50} {'B=1 ms':>8} {'GB/s':>6} {'B=8 ms':>8}")
    with torch.inference_mode():
        for name, (f, bytes_per) in ways.items():
            t1 = bench(lambda: f(torch.randn(1, 768)))
            t8 = bench(lambda: f(torch.randn(8, 768)))
            print(f"{name:50} {t1 * 1e3:8.2f} {W.numel() * bytes_per / t1 / 1e9:6.1f} {t8 * 1e3:8.2f}")


if __name__ == "__main__":
    main()
