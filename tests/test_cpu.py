"""gpt2kit.cpu: every CPU-dependent choice for every CPU family, and each kernel variant against PyTorch.

Choices (which kernels build, what `--dtype auto` means) are tested on injected CpuInfo of each
family, so they are checked on any machine. Kernel arithmetic is tested for each instruction set
this machine can run; the others say skipped and why.
"""

import ctypes
import functools
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gpt2kit
from gpt2kit.config import GPTConfig
from gpt2kit.cpu import features, kernels, policy, topk, tuning, weights
from gpt2kit.cpu import gelu as cpu_gelu
from gpt2kit.cpu.candidates import Candidate, build, candidates, for_dtype
from gpt2kit.cpu.policy import Fidelity
from gpt2kit.cpu.runner import CpuGPT
from gpt2kit.cpu.tuning import compare
from gpt2kit.cpu.weights import KINDS, KernelLinear, kernel_linear
from gpt2kit.errors import UserError
from gpt2kit.model import GPT, KVCache, gelu
from gpt2kit.paths import kernels_dir, tuning_dir

HERE = features.detect()
FAMILIES = ["old_x86", "avx2", "avx512", "avx512_bf16", "amx", "arm"]
FORMATS = list(KINDS)  # the kinds a build lacks (int8a8, bfloat16a16 without VNNI / AVX512-BF16) skip


def isa_cpu(isa: str) -> features.CpuInfo:
    """This machine narrowed to instruction set `isa`, or a skip saying why it cannot run it."""
    needed = {"avx2": HERE.avx2, "avx512": HERE.avx512}[isa]
    if not needed:
        pytest.skip(f"this CPU ({HERE.describe()}) has no {isa}; that variant is tested on a machine that has it")
    if isa == "avx2":  # the AVX2 build on an AVX-512 machine too: narrow what gpt2kit believes
        return features.CpuInfo(HERE.machine, HERE.system, HERE.model, HERE.cores, HERE.flags - features.AVX512)
    return HERE


@functools.cache
def emulated_avx512() -> kernels.Kernels:
    """The AVX-512 source compiled for AVX2 through SIMDe's portable intrinsics: checks the 16-lane
    code's logic on machines without AVX-512 (it is not what runs for real: that build is native)."""
    if not HERE.avx2:
        pytest.skip("the emulated AVX-512 build needs an AVX2 machine")
    if not Path("/usr/include/simde/x86/avx512.h").is_file():
        pytest.skip("SIMDe's headers are missing: apt-get install libsimde-dev (README's set-up does)")
    so = Path(tempfile.mkdtemp()) / "gpt2kit-avx512-emulated.so"
    subprocess.run(
        [
            kernels.compiler(),
            *kernels.COMMON_FLAGS,
            *kernels.AVX2_FLAGS,
            "-DGPT2KIT_EMULATE_AVX512",
            "-Wno-psabi",
            "-o",
            str(so),
            *map(str, kernels.SOURCES),
            *kernels.LIBS,
        ],
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(so))
    kernels._declare(lib)
    return kernels.Kernels(lib, so, "avx512-emulated")


def loaded(isa: str) -> kernels.Kernels:
    if isa == "avx512-emulated":
        return emulated_avx512()
    k = kernels.load(isa_cpu(isa))
    assert k is not None, kernels.why_not(isa_cpu(isa))  # README's set-up installs gcc
    assert k.isa.split("-")[0] == isa
    return k


def with_kind(k: kernels.Kernels, fmt: str) -> kernels.Kernels:
    if fmt not in k.kinds:
        pytest.skip(f"the {k.isa} build has no {fmt} (it needs AVX512-VNNI / AVX512-BF16)")
    return k


# --- choices, for every family, on any machine ---------------------------------------------


@pytest.mark.parametrize(
    "family,isa",
    [
        ("old_x86", None),
        ("avx2", "avx2"),
        ("avx512", "avx512-vnni"),
        ("avx512_bf16", "avx512-vnni-bf16"),
        ("amx", "avx512-vnni-bf16"),
        ("arm", None),
    ],
)
def test_each_family_builds_the_widest_kernels_it_can_run(family, isa):
    got = kernels.isa_for(features.info(family))
    assert (got[0] if got else None) == isa
    if isa and isa.startswith("avx512"):
        assert "-mavx512f" in got[1] and "-mavx2" in got[1]
        assert ("-mavx512vnni" in got[1]) == ("vnni" in isa) and ("-mavx512bf16" in got[1]) == ("bf16" in isa)
    no_vnni = features.CpuInfo("x86_64", "Linux", "", 2, features.info("avx512").flags - {"avx512_vnni"})
    assert kernels.isa_for(no_vnni)[0] == "avx512"


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_chooses_among_what_each_family_runs_fast(family):
    cpu = features.info(family)
    isa = kernels.isa_for(cpu)
    # the library such a CPU builds: this machine's AVX2 one, or the AVX-512 source through SIMDe
    k = None if isa is None else loaded("avx2") if isa[0] == "avx2" else emulated_avx512()
    names = {c.name for c in candidates(cpu, k)}
    if k is not None:
        assert {"float32/kernels", "float16/kernels", "bfloat16/kernels", "int8/kernels"} <= names
        assert ("int8a8/kernels" in names) == ("bfloat16a16/kernels" in names) == (isa[0] != "avx2")
    else:
        assert names >= {"float32/torch", "int8/torch"}
    # bf16 arithmetic through PyTorch only where it is native: elsewhere it is emulated, dozens of times slower
    assert ("bfloat16/torch" in names) == (family in ("avx512_bf16", "amx"))


def test_families_the_kernels_cannot_serve_say_why(monkeypatch):
    assert "lacks AVX2" in kernels.why_not(features.info("old_x86"))
    assert "x86-64 Linux" in kernels.why_not(features.info("arm"))
    monkeypatch.setenv("GPT2KIT_NATIVE", "0")
    assert kernels.load(HERE) is None and kernels.why_not(HERE) == "GPT2KIT_NATIVE=0"


def test_flags_can_be_narrowed_never_widened(monkeypatch):
    monkeypatch.setenv("GPT2KIT_CPU_FLAGS", "avx2 fma f16c avx512f made_up_flag")
    cpu = features.detect()
    assert cpu.flags <= HERE.flags and "made_up_flag" not in cpu.flags
    assert cpu.flags == HERE.flags & {"avx2", "fma", "f16c", "avx512f"}
    assert not cpu.avx512  # avx512bw/vl/dq narrowed away


def fid(top1, loss, ref=5.0):
    return Fidelity(top1, loss, ref)


def test_policy_takes_the_fastest_candidate_that_keeps_fp32s_answers():
    t = {
        "float32/kernels": {"batch1": 4.0, "batch8": 8.0, "prefill": 10.0},
        "float16/kernels": {"batch1": 2.0, "batch8": 6.0, "prefill": 11.0},
        "int8/kernels": {"batch1": 1.0, "batch8": 5.0, "prefill": 12.0},
    }
    good, bad_top1, bad_loss = fid(0.999, 5.001), fid(0.99, 5.0), fid(1.0, 5.01)
    assert policy.by_speed(t, "float32/kernels") == ["int8/kernels", "float16/kernels", "float32/kernels"]
    assert policy.choose(t, {"int8/kernels": good, "float16/kernels": good}, "float32/kernels") == "int8/kernels"
    assert policy.choose(t, {"int8/kernels": bad_top1, "float16/kernels": good}, "float32/kernels") == "float16/kernels"
    assert (
        policy.choose(t, {"int8/kernels": bad_loss, "float16/kernels": bad_top1}, "float32/kernels")
        == "float32/kernels"
    )
    assert policy.choose(t, {}, "float32/kernels") == "float32/kernels"  # unmeasured fidelity never wins
    slow = {k: {s: 100.0 for s in policy.TIMED_ROWS} for k in t if k != "float32/kernels"}
    assert policy.choose({**t, **slow}, {"int8/kernels": good}, "float32/kernels") == "float32/kernels"


def test_an_unknown_dtype_is_a_user_error():
    with pytest.raises(UserError, match="unknown dtype"):
        for_dtype("float64", None)


# --- kernel arithmetic, per instruction set this machine has --------------------------------


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_the_kernels_build_into_the_current_home(isa, tmp_path, monkeypatch):
    """The library belongs to the GPT2KIT_HOME in force now, whatever an earlier test used."""
    for home in ("a", "b"):
        monkeypatch.setenv("GPT2KIT_HOME", str(tmp_path / home))
        k = loaded(isa)
        assert k.path.is_file() and k.path.parent == kernels_dir() == tmp_path / home / "kernels"
        assert k.path.name.startswith(f"gpt2kit-{isa}-")


@pytest.mark.parametrize("isa", ["avx2", "avx512", "avx512-emulated"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "M,K,N",
    [
        (1, 768, 50),
        (2, 37, 19),
        (3, 64, 7),
        (5, 96, 301),
        (8, 3072, 9),
        (33, 40, 11),
        # the packed many-row path: K across chunks with a tail, rows past one group, K under one vector
        (16, 600, 13),
        (67, 520, 8),
        (4, 13, 4),
        # rows along the lanes (AVX2, whole pairs of vectors: 16 rows): K past one chunk with a tail under
        # a vector, a last tile of W's rows part empty, K under one vector and N under one tile, 4 pairs
        (32, 130, 13),
        (32, 5, 4),
        (64, 600, 25),
    ],
)
def test_linear_matches_torch(isa, fmt, M, K, N):
    k = with_kind(loaded(isa), fmt)
    g = torch.Generator().manual_seed(M * 1000 + K)
    w, b, x = torch.randn(N, K, generator=g), torch.randn(N, generator=g), torch.randn(M, K, generator=g)
    lin = KernelLinear(k, w, b, fmt)
    ref = F.linear(rounded_activations(x, fmt), lin.dense_weight(), b)  # the same stored weights, PyTorch's product
    got = kernel_linear(k, x, lin.weight, lin.kind, lin.scales, lin.bias)
    tol = 1e-4 * max(1.0, ref.abs().max().item())  # fp32 accumulation in another order
    assert got.shape == (M, N) and (got - ref).abs().max() < tol
    assert (lin(x.view(M, 1, K)).view(M, N) - ref).abs().max() < tol


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16", "int8"])
def test_a_prompts_product_widens_the_stored_weights_block_by_block(fmt, monkeypatch):
    """Above the format's KERNEL_MAX_ROWS rows (a prompt) the product is PyTorch's GEMM on the stored weights
    widened a block of rows at a time into a reused buffer: the same numbers as on the whole widened matrix.
    Up to it the kernels compute it, and no buffer is made."""
    k = loaded("avx2")
    monkeypatch.setattr(weights, "PREFILL_BLOCK_WEIGHTS", 7 * 40)  # 7 of W's rows a block: 301 rows in 43
    g = torch.Generator().manual_seed(5)
    rows = weights.KERNEL_MAX_ROWS[fmt]
    w, b, x = torch.randn(301, 40, generator=g), torch.randn(301, generator=g), torch.randn(rows + 6, 40, generator=g)
    lin = KernelLinear(k, w, b, fmt)
    weights._scratches.__dict__.clear()
    ref = F.linear(x, lin.dense_weight(), b)  # (rows + 6, 301)
    tol = 1e-5 * ref.abs().max().item()
    assert torch.allclose(lin(x[:rows]), ref[:rows], rtol=0, atol=tol) and not weights._scratches.__dict__
    assert torch.allclose(lin(x), ref, rtol=0, atol=tol)
    assert fmt == "float32" or weights._scratches.buf.numel() > 0  # fp32's GEMM needs nothing widened
    assert torch.equal(lin(x), lin(x))  # the reused buffer carries nothing over between calls


def test_a_prompt_pass_runs_inside_and_outside_inference_mode_in_any_order():
    """The reused widening buffer is per thread: one first made under inference_mode (generate) must still
    take writes in a later no_grad forward (a script scoring text after generating), and the other way."""
    k = loaded("avx2")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(weights.KERNEL_MAX_ROWS["float16"] + 8, 48, generator=g)  # the GEMM's rows, not the kernels'
    w = torch.randn(64, 48, generator=g)
    ref = F.linear(x, KernelLinear(k, w, None, "float16").dense_weight())
    for first, then in ((torch.inference_mode, torch.no_grad), (torch.no_grad, torch.inference_mode)):
        weights._scratches.__dict__.clear()  # this thread's buffer: made afresh by the first pass below
        for mode in (first, then, first):
            with mode():
                assert torch.allclose(KernelLinear(k, w, None, "float16")(x), ref, atol=1e-5)


@pytest.mark.parametrize("fmt", ["float32", "float16", "int8"])
def test_a_prompt_pass_on_the_kernels_takes_their_gelu_and_pytorchs_answers(fmt):
    """A model built on the kernels runs its prompts' GELU through vmath.c, in place on the product before it:
    the same logits as PyTorch's GELU on the same matrices, to fp32's rounding, with or without a cache."""
    k = loaded("avx2")
    model = build(random_gpt(64, 4), Candidate(fmt, "kernels"), k)
    assert all(block.mlp.gelu.func is cpu_gelu.kernel_gelu for block in model.reference.h)
    idx = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(8))  # 120 rows: the blocked GEMMs
    with torch.inference_mode():
        got = model(idx)
        cache = KVCache(model.config, 3, 40, "cpu", model.cache_dtype)
        cached = model(idx, cache=cache)
        for block in model.reference.h:
            block.mlp.gelu = gelu
        want = model(idx)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4) and torch.allclose(cached, want, atol=1e-4, rtol=1e-4)
    assert not torch.equal(got, want)  # really another GELU: its roundings differ somewhere


def test_the_kernels_gelu_leaves_what_it_cannot_overwrite_to_pytorch():
    k = loaded("avx2")
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(9))
    for t in (x.t(), x.double(), x.clone().requires_grad_()):  # not contiguous, not fp32, tracked by autograd
        before = t.detach().clone()
        assert torch.allclose(cpu_gelu.kernel_gelu(k, t), gelu(before)) and torch.equal(t.detach(), before)
    y = x.clone()
    assert cpu_gelu.kernel_gelu(k, y) is y and torch.allclose(y, gelu(x), atol=1e-6)


@pytest.mark.parametrize("isa", ["avx2", "avx512", "avx512-emulated"])
def test_the_vector_gelu_and_exp_match_float64(isa):
    """vmath.c's GELU (GPT-2's tanh form) and e^x against PyTorch's in float64, over the whole range a step
    meets: both tails, zero, tiny and huge values, -inf (a masked score), and an array's last partial vector."""
    k = loaded(isa)
    g = torch.Generator().manual_seed(7)
    x = torch.cat([torch.linspace(-30, 30, 60_001), torch.randn(1003, generator=g) * 4])
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 100.0, -100.0, 1e4, -1e4])])  # 61,012: a tail of 4
    ref = F.gelu(x.double(), approximate="tanh")
    got, split = x.clone(), x.clone()
    k.lib.gpt2kit_gelu(got.data_ptr(), got.numel())
    k.lib.gpt2kit_gelu_all(split.data_ptr(), split.numel(), 2)  # a prompt pass's: chunks shared by threads
    assert torch.equal(split, got)
    # gelu(x) is within |x| of zero: an error of a few fp32 roundings of x, however small the result
    assert ((got.double() - ref).abs() <= 2e-6 * x.double().abs() + 1e-37).all()
    big = ref.abs() > 1e-3
    assert ((got.double() - ref).abs()[big] <= 4e-6 * ref.abs()[big]).all()

    w = torch.cat([torch.linspace(-100, 0, 10_003), torch.tensor([-float("inf")])])
    e = w.clone()
    k.lib.gpt2kit_exp_shifted(e.data_ptr(), e.numel(), 2.5)
    ref = torch.exp((w - 2.5).double())  # the difference rounded to fp32, as the kernel takes it
    assert ((e.double() - ref).abs() <= 2.4e-7 * ref + 1e-37).all()  # about 2 ulp; 0 below e^-87 and at -inf
    assert e[-1] == 0


@pytest.mark.parametrize("isa", ["avx2", "avx512-emulated"])
@pytest.mark.parametrize(
    "B,V,k",
    [(B, V, k) for B, V in [(1, 50257), (3, 97), (16, 1001), (2, 41), (1, 9)] for k in (1, 2, 40, 41) if k <= V],
)
def test_topk_matches_torch(isa, B, V, k):
    """kernels/topk.c against torch.topk: the same values, largest first, and the same ids wherever no two of
    the k and the next are equal; of equal logits the lowest ids, in order (torch leaves their order open)."""
    kern = loaded(isa)
    g = torch.Generator().manual_seed(B * V + k)
    x = torch.randn(B, V, generator=g)
    x[:, ::7] = -float("inf")  # barred tokens (logit_bias -100, constraints)
    x[:, 1::3] = torch.round(x[:, 1::3] * 4) / 4  # exact ties, inside the top k and at its edge
    got_v, got_i = topk.kernel_topk(kern, x, k)
    want_v, want_i = torch.topk(x, k, dim=-1)
    assert torch.equal(got_v, want_v)
    assert torch.equal(x.gather(1, got_i), got_v)  # each id holds its value
    for row in range(B):
        for value in got_v[row].unique():
            chosen = got_i[row][got_v[row] == value]
            equal = (x[row] == value).nonzero().flatten()  # every id holding that value, ascending
            assert torch.equal(chosen, equal[: len(chosen)])


def test_topk_leaves_rows_with_nan_or_inf_to_torch():
    """A row that holds NaN or +inf has torch.topk's answer (NaN counts as the largest there), which the
    finite-logits check after it reads; the kernel's fast pass never decides those rows."""
    kern = loaded("avx2")
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(2))
    x[1, 17], x[2, 299], x[3, 3] = float("nan"), float("inf"), float("nan")
    got_v, got_i = topk.kernel_topk(kern, x, 5)
    want_v, want_i = torch.topk(x, 5, dim=-1)
    assert torch.equal(got_i, want_i) and torch.allclose(got_v, want_v, equal_nan=True)
    assert got_v[1, 0].isnan() and got_v[2, 0] == float("inf")


def rounded_activations(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """x as the kind's arithmetic sees it: int8 per row (symmetric) for int8a8, bf16 for bfloat16a16."""
    if fmt == "int8a8":
        scale = (x.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-30)
        return torch.round(x / scale) * scale
    if fmt == "bfloat16a16":
        return x.bfloat16().float()
    return x


def random_gpt(n_embd: int, n_head: int, seed: int = 0) -> GPT:
    model = GPT(GPTConfig(n_vocab=97, n_ctx=48, n_embd=n_embd, n_layer=2, n_head=n_head))
    model.init_weights(torch.Generator().manual_seed(n_embd + seed))
    with torch.no_grad():  # LayerNorms away from 1/0, so their arithmetic is tested too
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("ln_f"):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    return model.eval()


def decode(model, lengths=(10, 7, 4)) -> list[torch.Tensor]:
    """A padded batch: prefill, then 6 one-token steps, a row leaving after the third."""
    B, T = len(lengths), max(lengths)
    idx = torch.randint(0, 97, (B, T), generator=torch.Generator().manual_seed(1))
    cache = KVCache(model.config, B, 30, "cpu", model.cache_dtype)  # fp16 on the kernels' reduced formats
    positions = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        cache.valid[i, : T - n] = False
        positions[i, T - n :] = torch.arange(n)
    cache.padded = True
    with torch.inference_mode():
        steps = [model(idx, cache=cache, positions=positions)[:, -1:]]
        rows = [0, 1, 2]
        for t in range(6):
            if t == 3:  # a row leaves the batch, as a finished sample does
                cache.select(torch.tensor([0, 2]))
                rows = [0, 2]
            p = torch.tensor([[lengths[r] + t] for r in rows])
            steps.append(model(torch.full((len(rows), 1), 5 + t), cache=cache, positions=p))
    return steps


@pytest.mark.parametrize("isa", ["avx2", "avx512", "avx512-emulated"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n_embd,n_head", [(32, 4), (36, 4), (128, 2)])  # 9: not whole vectors; 64: GPT-2's
def test_decode_step_matches_pytorch_on_the_same_weights(isa, fmt, n_embd, n_head):
    """decode_step.c gives what PyTorch computes with the same stored weights, cache and all."""
    k = with_kind(loaded(isa), fmt)
    fast = build(random_gpt(n_embd, n_head), Candidate(fmt, "kernels"), k)
    assert fast.step is not None
    assert fast.cache_dtype == (torch.float32 if fmt == "float32" else torch.float16)
    slow = CpuGPT(fast.reference, fast.head, None, "the same modules, PyTorch's step")
    # The two write the fp16 cache from sums in another order, so a value can round to the next fp16; where
    # activations are rounded too (int8a8, bf16a16) that can move one of them by a step of their rounding.
    tol = {"int8a8": 1 / 127, "bfloat16a16": 2**-8}.get(fmt, 1e-4)
    for a, b in zip(decode(fast), decode(slow)):
        assert a.shape == b.shape and (a - b).abs().max() < tol * b.abs().max()


@pytest.mark.parametrize("isa", ["avx2", "avx512-emulated"])
@pytest.mark.parametrize("fmt", ["float32", "int8"])
def test_a_step_over_some_cache_rows_leaves_the_others_alone(isa, fmt):
    """decode_rows (a batch with dead slots): the rows given, at their own rows of the cache, compute what a
    step over every row computes for them; the skipped row's cache is not touched."""
    fast = build(random_gpt(32, 4), Candidate(fmt, "kernels"), with_kind(loaded(isa), fmt))
    idx = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(2))
    every, some = (KVCache(fast.config, 3, 30, "cpu", fast.cache_dtype) for _ in range(2))
    tokens, positions = torch.tensor([[4], [5], [6]]), torch.full((3, 1), 10)
    with torch.inference_mode():
        fast(idx, cache=every)
        fast(idx, cache=some)
        skipped = some.k[:, 1].clone(), some.v[:, 1].clone()
        want = fast(tokens, cache=every, positions=positions)  # (3, 1, V)
        got = fast.decode_rows(tokens[[0, 2]], positions[[0, 2]], some, torch.tensor([0, 2]))  # (2, 1, V)
    assert got.shape == (2, 1, 97) and some.length == every.length == 11
    assert (got - want[[0, 2]]).abs().max() < 1e-5 * want.abs().max()
    assert torch.allclose(some.k[:, [0, 2], :, 10].float(), every.k[:, [0, 2], :, 10].float(), atol=1e-3)
    assert torch.equal(some.k[:, 1], skipped[0]) and torch.equal(some.v[:, 1], skipped[1])
    with pytest.raises(ValueError, match="each at most once"):
        fast.decode_rows(tokens[:2], positions[:2], some, torch.tensor([2, 2]))


@pytest.mark.parametrize("isa", ["avx2", "avx512-emulated"])
@pytest.mark.parametrize("fmt", ["float32", "float16"])
@pytest.mark.parametrize("n_embd,n_head", [(32, 4), (128, 2)])  # head size 8, and GPT-2's 64 (8 keys at a time)
def test_padding_before_a_row_changes_nothing_in_its_step(isa, fmt, n_embd, n_head):
    """A row's step gives the same bits whatever padding a batch puts before it (the seed contract: a sample
    never depends on its batch): the same keys and values after 0 to 9 masked positions of garbage."""
    k = with_kind(loaded(isa), fmt)
    fast = build(random_gpt(n_embd, n_head), Candidate(fmt, "kernels"), k)
    g = torch.Generator().manual_seed(3)
    real = 13  # positions with keys and values; the step's token is the 14th
    shape = (fast.config.n_layer, 1, n_head, real, n_embd // n_head)
    keys, values = (torch.randn(shape, generator=g).to(fast.cache_dtype) for _ in range(2))
    answers = []
    for pad in range(10):
        cache = KVCache(fast.config, 1, 30, "cpu", fast.cache_dtype)
        cache.k.normal_(generator=g), cache.v.normal_(generator=g)  # garbage in the padding
        cache.k[:, :, :, pad : pad + real], cache.v[:, :, :, pad : pad + real] = keys, values
        cache.valid[0, :pad] = False
        cache.length = pad + real
        with torch.inference_mode():
            answers.append(fast.step(torch.tensor([[7]]), torch.tensor([[real]]), cache))
    assert all(torch.equal(a, answers[0]) for a in answers)


@pytest.mark.parametrize("engine", ["torch", "kernels"])
@pytest.mark.parametrize("fmt,tol", [("float32", 1e-4), ("float16", 2e-3), ("bfloat16", 2e-2), ("int8", 5e-2)])
def test_each_format_stays_close_to_the_fp32_reference(fmt, tol, engine):
    """The rounding each weight format costs, on PyTorch's own path (any machine) and on the kernels' (their
    fp16 KV cache included: its rounding is finer than the weights', so the same bound holds)."""
    k = loaded("avx2") if engine == "kernels" else None
    ref = decode(random_gpt(32, 4))
    got = decode(build(random_gpt(32, 4), Candidate(fmt, engine), k))
    for a, b in zip(got, ref):
        assert (a - b).abs().max() < tol * b.abs().max()


@pytest.mark.parametrize("engine", ["torch", "kernels"])
@pytest.mark.parametrize("fmt", ["float16", "int8"])
def test_the_block_by_block_check_equals_the_built_models_fidelity(fmt, engine, monkeypatch):
    """tuning.compare runs fp32 and the candidate side by side one block at a time (so a first auto load
    never holds two models); its figures equal those of the whole built model against the whole fp32 one,
    the kernels' fp16 rounding of keys and values included."""
    gpt, c, k = random_gpt(32, 4), Candidate(fmt, engine), loaded("avx2") if engine == "kernels" else None
    probe = torch.randint(0, 97, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    windows = tuning._windows(probe, gpt.config.n_ctx)  # 48, 48, 48 and 6 positions
    monkeypatch.setattr(tuning, "HEAD_ROWS", 20)  # the head in chunks of 20, 20, 8 positions per window
    with torch.no_grad():
        ref = [gpt(w)[0] for w in windows]
        got = compare(gpt, c, k, windows)
        assert torch.equal(gpt(windows[0])[0], ref[0])  # the model is left as it was
        built = build(random_gpt(32, 4), c, k)
        logits = [built(w)[0] for w in windows]

    def loss(ls):
        return (
            torch.cat([F.cross_entropy(lg[:-1], w[0, 1:], reduction="none") for lg, w in zip(ls, windows)])
            .mean()
            .item()
        )

    top1 = torch.cat([a.argmax(-1) == b.argmax(-1) for a, b in zip(logits, ref)]).float().mean().item()
    assert got == Fidelity(top1, loss(logits), loss(ref))
    assert got.loss != got.reference_loss  # rounded weights: a different answer, so the check can fail


# --- the whole policy on this machine ---------------------------------------------------------


def test_auto_measures_once_and_its_choice_keeps_fp32s_answers(hf_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2KIT_HOME", str(tmp_path))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # a quiet machine: one timing stands
    lm = gpt2kit.load(hf_tiny, device="cpu")
    files = list(tuning_dir().glob("*.json"))
    assert len(files) == 1 and isinstance(lm.model, CpuGPT) and lm.info["cpu_path"] == lm.model.path
    data = json.loads(files[0].read_text())
    decision = lm.model.decision
    assert set(data["timings"]["32"]) == {c.name for c in candidates(HERE, kernels.load(HERE))}
    if decision.chosen.startswith("float32/"):
        assert all(not f.meets_bar for f in decision.fidelity.values())
    else:
        assert decision.fidelity[decision.chosen].meets_bar
    stamp = files[0].stat().st_mtime_ns
    again = gpt2kit.load(hf_tiny, device="cpu")  # decided from the file: nothing measured again
    assert files[0].stat().st_mtime_ns == stamp and again.info["cpu_path"] == lm.info["cpu_path"]
    full = gpt2kit.load(hf_tiny, device="cpu", dtype="float32")
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = lm.model(idx), full.model(idx)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.95


def test_a_timing_taken_on_a_busy_machine_is_taken_again_when_it_is_quiet(hf_tiny, tmp_path, monkeypatch):
    """One busy moment does not decide `auto` for good: the load rides with the timing, and a load on a
    quieter machine times the paths again (then that timing stands)."""
    monkeypatch.setenv("GPT2KIT_HOME", str(tmp_path))
    cores = HERE.cores

    def loads(per_core):
        monkeypatch.setattr(os, "getloadavg", lambda: (per_core * cores, 0.0, 0.0))
        gpt2kit.load(hf_tiny, device="cpu")
        (file,) = tuning_dir().glob("*.json")
        return json.loads(file.read_text())["timed_at_load"]["32"], file.stat().st_mtime_ns

    busy, first = loads(3.0)
    assert busy == pytest.approx(3.0)
    assert loads(2.5)[1] == first  # still busy: nothing better to measure on
    quiet, second = loads(0.2)
    assert quiet == pytest.approx(0.2) and second != first
    assert loads(0.1)[1] == second  # a quiet timing stands


def test_a_change_to_any_one_matrix_is_another_model_for_auto():
    """auto keeps its fidelity figures per model: an adapter merged into one matrix of one middle block
    (LoRA's update is dense) must not reuse the base's figures."""
    gpt = GPT(GPTConfig(n_vocab=97, n_ctx=48, n_embd=32, n_layer=3, n_head=2))
    gpt.init_weights(torch.Generator().manual_seed(0))
    probe = list(range(40))
    base = tuning.fingerprint(gpt, probe)
    assert tuning.fingerprint(gpt, probe) == base and tuning.fingerprint(gpt, probe[:-1]) != base
    for name in ("h.1.mlp.c_fc.weight", "h.1.attn.c_proj.weight", "ln_f.bias"):
        p = gpt.get_parameter(name)
        before = p.detach().clone()
        with torch.no_grad():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 1e-3)
        assert tuning.fingerprint(gpt, probe) != base, name
        with torch.no_grad():
            p.copy_(before)
    assert tuning.fingerprint(gpt, probe) == base


def test_without_the_kernels_pytorch_does_the_work(hf_tiny, monkeypatch):
    """GPT2KIT_NATIVE=0 (or a machine without a compiler) gives the same numbers through PyTorch."""
    idx = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    out = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("GPT2KIT_NATIVE", flag)
        for dtype in ("float32", "int8"):
            lm = gpt2kit.load(hf_tiny, device="cpu", dtype=dtype)
            with torch.no_grad():
                out[flag, dtype] = lm.model(idx)
            assert lm.generate("Hi", length=3, seed=1)
            assert lm.model.path.endswith("/torch") == (flag == "0" or not HERE.avx2)
    assert (out["1", "float32"] - out["0", "float32"]).abs().max() < 1e-4
    # int8 without the kernels is PyTorch's own int8 matmul on bf16 activations: close, not equal.
    assert (out["1", "int8"].argmax(-1) == out["0", "int8"].argmax(-1)).float().mean() > 0.9


def test_a_compiler_that_fails_falls_back_and_says_why(hf_tiny, tmp_path):
    """No working C compiler: generation still works (PyTorch's kernels) and `info` says why."""
    from conftest import run_cli

    env = {"CC": "false", "GPT2KIT_HOME": str(tmp_path / "home")}  # `false`: a compiler that always fails
    r = run_cli("info", hf_tiny, env=env)
    assert r.returncode == 0 and "not in use: could not build them with false" in r.stdout
    r = run_cli("generate", "Hi", "--model", hf_tiny, "--length", "3", "--seed", "1", env=env)
    assert r.returncode == 0 and r.stdout.strip() and "Traceback" not in r.stderr
    assert not list((tmp_path / "home" / "kernels").glob("*.so"))


def test_info_shows_what_auto_takes_here_and_why(hf_tiny, tmp_path, monkeypatch):
    from conftest import run_cli

    r = run_cli("info", hf_tiny, "--json", env={"GPT2KIT_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert HERE.family in shown["cpu_kernels"] and "(chosen)" in shown["cpu_auto"]
    assert "float32/" in shown["cpu_auto"] and "fp32's speed" in shown["cpu_auto"]
    chosen = next(part.split(" ")[0] for part in shown["cpu_auto"].split("; ") if "(chosen)" in part)
    monkeypatch.setenv("GPT2KIT_HOME", str(tmp_path))  # a load decides the same from the file `info` wrote
    assert gpt2kit.load(hf_tiny, device="cpu").info["cpu_path"] == chosen
