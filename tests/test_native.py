"""gpt2kit's own AVX2 kernels (kernels/*.c) against PyTorch's arithmetic."""
import platform
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt2kit import native
from gpt2kit.config import GPTConfig
from gpt2kit.cpu_inference import NativeLinear, use_native
from gpt2kit.model import GPT, KVCache

X86_AVX2 = platform.system() == "Linux" and platform.machine() == "x86_64" and {"avx2", "fma", "f16c"} <= native.cpu_flags()
needs_kernels = pytest.mark.skipif(not X86_AVX2, reason="the kernels are for x86 CPUs with AVX2, FMA and F16C")


@needs_kernels
def test_the_kernels_build_on_this_machine():
    # On an x86 Linux machine with a C compiler (README's set-up has one) the fast path must be there.
    lib = native.library()
    assert lib is not None
    so = Path(lib._name)
    assert so.is_file() and so.name.startswith("gpt2kit-") and so.parent == native.kernels_dir()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8])
@pytest.mark.parametrize("M,K,N", [(1, 768, 50), (2, 37, 19), (3, 64, 7), (5, 96, 301), (8, 3072, 9), (33, 40, 11)])
def test_linear_matches_torch(dtype, M, K, N):
    g = torch.Generator().manual_seed(M * 1000 + K)
    w, b, x = torch.randn(N, K, generator=g), torch.randn(N, generator=g), torch.randn(M, K, generator=g)
    lin = NativeLinear(w, b, dtype)
    ref = F.linear(x, lin.dense_weight(), b)  # the same stored (rounded) weights, PyTorch's product
    got = native.linear(x, lin.weight, lin.kind, lin.scales, lin.bias)
    assert got.shape == (M, N)
    assert (got - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())
    assert (lin(x.view(M, 1, K)).view(M, N) - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())


def _random_gpt(n_embd: int, n_head: int) -> GPT:
    model = GPT(GPTConfig(n_vocab=97, n_ctx=48, n_embd=n_embd, n_layer=2, n_head=n_head))
    model.init_weights(torch.Generator().manual_seed(n_embd))
    with torch.no_grad():  # LayerNorms away from 1/0, so their arithmetic is tested too
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("ln_f"):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    return model.eval()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8])
@pytest.mark.parametrize("n_embd,n_head", [(32, 4), (36, 4)])  # 36: head size 9, rows not multiples of 8
def test_decode_step_matches_the_pytorch_model(dtype, n_embd, n_head):
    """A padded batch decoded through decode_step.c gives PyTorch's logits, cache and all."""
    model = use_native(_random_gpt(n_embd, n_head), dtype)
    lengths = (10, 7, 4)
    B, T = len(lengths), max(lengths)
    idx = torch.randint(0, 97, (B, T), generator=torch.Generator().manual_seed(1))
    outputs = []
    with torch.inference_mode():
        for kernel in (model.step_kernel, None):
            model.step_kernel = kernel
            cache = KVCache(model.config, B, 30, "cpu", torch.float32)
            positions = torch.zeros(B, T, dtype=torch.long)
            for i, n in enumerate(lengths):
                cache.valid[i, :T - n] = False
                positions[i, T - n:] = torch.arange(n)
            cache.padded = True
            steps = [model(idx, cache=cache, positions=positions)[:, -1:]]
            for t in range(6):
                if t == 3:  # a row leaves the batch, as a finished sample does
                    cache.select(torch.tensor([0, 2]))
                    positions = positions[[0, 2]]
                rows = cache.k.shape[1]
                p = torch.tensor([[n + t] for n in lengths])[[0, 2] if rows == 2 else [0, 1, 2]]
                tok = torch.full((rows, 1), 5 + t)
                steps.append(model(tok, cache=cache, positions=p))
            outputs.append(steps)
    for fast, ref in zip(*outputs):
        assert fast.shape == ref.shape
        assert (fast - ref).abs().max() < 1e-4 * ref.abs().max()


@needs_kernels
def test_generation_uses_the_kernels_by_default(lm_tiny):
    from gpt2kit.cpu_inference import NativeStep
    assert isinstance(lm_tiny.model.step_kernel, NativeStep)
    assert lm_tiny.generate("Hello", length=5, seed=1)


def test_without_the_kernels_pytorch_does_the_work(hf_tiny, monkeypatch):
    """GPT2KIT_NATIVE=0 (or a machine without a compiler) gives the same numbers through PyTorch."""
    import gpt2kit
    idx = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    out = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("GPT2KIT_NATIVE", flag)
        native.library.cache_clear()
        for dtype in ("float32", "int8"):
            lm = gpt2kit.load(hf_tiny, device="cpu", dtype=dtype)
            with torch.no_grad():
                out[flag, dtype] = lm.model(idx)
            assert lm.generate("Hi", length=3, seed=1)
        if flag == "0":
            assert lm.model.step_kernel is None
    native.library.cache_clear()
    assert (out["1", "float32"] - out["0", "float32"]).abs().max() < 1e-4
    # int8 without the kernels is PyTorch's own int8 matmul on bf16 activations: close, not equal.
    assert (out["1", "int8"].argmax(-1) == out["0", "int8"].argmax(-1)).float().mean() > 0.9


@needs_kernels
def test_the_cpu_default_is_fp16_weights_close_to_fp32(hf_tiny):
    import gpt2kit
    default = gpt2kit.load(hf_tiny, device="cpu")
    full = gpt2kit.load(hf_tiny, device="cpu", dtype="float32")
    assert default.info["dtype"] == "float16" and default.model.head.weight.dtype == torch.float16
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = default.model(idx), full.model(idx)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.99
    assert (a - b).abs().max() < 1e-2 * b.abs().max()


def test_a_compiler_that_fails_falls_back_and_says_why(hf_tiny, tmp_path):
    """No working C compiler: generation still works (PyTorch's kernels) and `info` says why."""
    from conftest import run_cli
    env = {"CC": "false", "GPT2KIT_HOME": str(tmp_path / "home")}  # `false`: a compiler that always fails
    r = run_cli("info", hf_tiny, env=env)
    assert r.returncode == 0 and "cpu kernels not in use: could not build them with false" in r.stdout
    r = run_cli("generate", "Hi", "--model", hf_tiny, "--length", "3", "--seed", "1", env=env)
    assert r.returncode == 0 and r.stdout.strip() and "Traceback" not in r.stderr
    assert not list((tmp_path / "home" / "kernels").glob("*.so"))
