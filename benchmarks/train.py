"""Fine-tuning speed: gpt2kit's `finetune` against transformers, as a share of this CPU's matmul rate.

    python benchmarks/train.py                   # writes benchmarks/train_results.json
    python benchmarks/train.py --steps 5         # shorter
    python benchmarks/train.py --emulated-bf16   # also time bf16 on a CPU that only emulates it (slow)

One run, each case in its own process, on a 124M-shaped GPT-2 with random weights (nothing is
downloaded), batch 4 x 256, AdamW at lr 1e-4 with gradients clipped to 1 (gpt2kit's defaults):
  - gpt2kit `finetune` with the defaults (`--dtype auto`), with `--dtype float32`, and with
    `--dtype bfloat16` where the CPU has native bf16 (AVX512-BF16 or AMX);
  - transformers' GPT2LMHeadModel in a plain loop, in fp32 and under bf16 autocast (its best CPU setting);
  - the bound: a 2048 x 2048 matmul in the dtype the case's matmuls run in (1024 x 1024 for bf16 where it
    is emulated), measured inside each case's own process between its training steps, on the threads
    training uses, so the bound sees the same load as the steps it is compared with (this machine is
    shared). Training costs 6 x parameters FLOPs a token (2 forward, 4 backward), so the bound is matmul
    FLOP/s / (6 N) tokens/s; the report also gives each case against a count with attention's FLOPs
    (6N + 12 x n_layer x T x n_embd), which 6N leaves out.
  - `--case gemms` (run on its own): the step's own matrix products against the 2048-square one, interleaved;
    their FLOP-weighted rate is the most an fp32 step on PyTorch's matmuls can reach.
gpt2kit's figure is its own step time (metrics.csv's elapsed_s, which excludes saving and the matmuls
measured between steps); transformers' is the time of its steps alone. The first steps of each case warm
up and are not timed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
B, T = 4, 256
LR = 1e-4


# --- the cases, each run in a child process -------------------------------------------------------


def matmul_rate(dtype, n: int, seconds: float = 0.5) -> float:
    """FLOP/s of an n x n matmul in `dtype` on this process's threads, repeated for about `seconds`."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    t = time.perf_counter()
    a @ b  # warm-up; it also sets how many repeats fill the time
    reps = max(1, min(20, int(seconds / max(time.perf_counter() - t, 1e-6))))
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return reps * 2 * n**3 / (time.perf_counter() - t)


def matmul_size(dtype) -> int:
    """2048, or 1024 for bf16 where it is emulated (no AVX512-BF16/AMX: one 2048 matmul takes about a minute)."""
    import torch

    from gpt2kit.cpu.features import detect

    return 1024 if dtype == torch.bfloat16 and not detect().native_bf16 else 2048


def case_matmul(args) -> dict:
    """FLOP/s of a 2048 x 2048 matmul in fp32 and bf16, each repeated for at least a second."""
    import torch

    flops, sizes = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        sizes[name] = matmul_size(dtype)
        flops[name] = matmul_rate(dtype, sizes[name], 1.0)
    return {"flops": flops, "size": sizes, "threads": torch.get_num_threads(), "torch": torch.__version__}


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


class MatmulBetweenSteps:
    """The bound's matmul rate, measured in the training process between its steps (on its threads, under the
    same load), as a logging handler on finetune's per-step log line: finetune's elapsed_s counts only the steps."""

    def __init__(self, dtype):
        import logging

        self.dtype, self.n, self.rates = dtype, matmul_size(dtype), []
        handler = logging.Handler()
        handler.emit = self.emit
        logging.getLogger("gpt2kit").addHandler(handler)
        logging.getLogger("gpt2kit").setLevel(logging.INFO)

    def emit(self, record) -> None:
        if "loss=" in record.getMessage():
            self.measure()

    def measure(self) -> None:
        self.rates.append(matmul_rate(self.dtype, self.n))

    def result(self) -> dict:
        return {"matmul_flops": median(self.rates), "matmul_flops_all": self.rates, "matmul_size": self.n}


def case_gpt2kit(args) -> dict:
    import torch

    import gpt2kit
    from gpt2kit.devices import resolve_device
    from gpt2kit.training.precision import plan_precision

    plan = plan_precision(args.dtype, resolve_device("cpu"))
    matmul = MatmulBetweenSteps(plan.dtype)
    with tempfile.TemporaryDirectory() as d:
        gpt2kit.finetune(
            dataset=args.data,
            model=args.model,
            checkpoint_dir=Path(d),
            steps=args.warmup + args.steps,
            batch_size=B,
            context_length=T,
            learning_rate=LR,
            dtype=args.dtype,
            device="cpu",
            print_every=1,
            save_every=10**9,
            progress=False,
        )
        with open(Path(d) / "run1" / "metrics.csv", newline="") as f:
            elapsed = {int(r["step"]): float(r["elapsed_s"]) for r in csv.DictReader(f) if r["loss"]}
    seconds = elapsed[args.warmup + args.steps] - elapsed[args.warmup]
    return {
        "tokens_per_s": args.steps * B * T / seconds,
        "matmul_dtype": str(plan.dtype).removeprefix("torch."),
        "precision": plan.describe(),
        "threads": torch.get_num_threads(),
        **matmul.result(),
    }


def case_transformers(args) -> dict:
    import contextlib

    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(args.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    bf16 = args.dtype == "bfloat16"

    def step():
        x = torch.randint(0, 50257, (B, T), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    matmul = MatmulBetweenSteps(torch.bfloat16 if bf16 else torch.float32)
    for _ in range(args.warmup):
        step()
    seconds = 0.0
    for _ in range(args.steps):
        matmul.measure()
        t = time.perf_counter()
        step()
        seconds += time.perf_counter() - t
    return {
        "tokens_per_s": args.steps * B * T / seconds,
        "matmul_dtype": args.dtype,
        "precision": "autocast to bfloat16" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        **matmul.result(),
    }


def training_gemms() -> list[tuple[str, tuple[int, int], tuple[int, int], bool, int]]:
    """(name, a's shape, b's shape, b transposed, uses per step) of every matrix product of a 124M training step at
    B x T, laid out as autograd runs them: forward x @ W.T, backward dY @ W and dY.T @ x (W stored (out, in))."""
    from gpt2kit.config import PRESETS

    c = PRESETS["124M"]
    N, C, L = B * T, c.n_embd, c.n_layer
    out = []
    for name, n_in, n_out, uses in (
        ("c_attn", C, 3 * C, L),
        ("attn.c_proj", C, C, L),
        ("c_fc", C, 4 * C, L),
        ("mlp.c_proj", 4 * C, C, L),
        ("head", C, c.n_vocab, 1),
    ):
        out += [
            (f"{name} forward", (N, n_in), (n_out, n_in), True, uses),
            (f"{name} d input", (N, n_out), (n_out, n_in), False, uses),
            (f"{name} d weight", (n_out, N), (N, n_in), False, uses),
        ]  # dY.T is a transposed view in autograd
    return out


def case_gemms(args) -> dict:
    """How fast the step's own matrix products run against the 2048-square one, interleaved in one process: the
    FLOP-weighted rate of the step's products is the most any fp32 step on PyTorch's matmuls can reach."""
    import torch

    rows, total_flops, total_time, square = [], 0.0, 0.0, []
    for name, a_shape, b_shape, b_t, uses in training_gemms():
        a = torch.randn(a_shape[::-1]).t() if name.endswith("d weight") else torch.randn(a_shape)
        b = torch.randn(b_shape)
        b = b.t() if b_t else b
        one = 2 * a.shape[0] * a.shape[1] * b.shape[1]
        reps, rates = 1 if one > 2e10 else 3, []  # the head's products are 79 GFLOP each
        a @ b  # warm-up
        for _ in range(3):
            square.append(matmul_rate(torch.float32, 2048, 0.3))
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            rates.append(reps * one / (time.perf_counter() - t))
        flops = one * uses
        rows.append({"product": name, "GFLOPs": median(rates) / 1e9, "of_square": median(rates) / median(square[-3:])})
        total_flops += flops
        total_time += flops / median(rates)
    return {
        "products": rows,
        "weighted_GFLOPs": total_flops / total_time / 1e9,
        "square_GFLOPs": median(square) / 1e9,
        "ceiling": total_flops / total_time / median(square),
        "threads": torch.get_num_threads(),
    }


CASES = {"matmul": case_matmul, "gpt2kit": case_gpt2kit, "transformers": case_transformers, "gemms": case_gemms}


# --- the driver -----------------------------------------------------------------------------------


def run_case(name: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--case", name] + [f"--{k}={v}" for k, v in kw.items()]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GPT2KIT_OFFLINE": "1"})
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"benchmark case {name} {kw} failed")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"  {name} {kw.get('dtype', '')}: {result} ({time.time() - t:.0f} s)", file=sys.stderr)
    return result


def make_inputs(folder: Path) -> tuple[Path, Path, int]:
    """A random 124M GPT-2 as a model folder (both libraries open it) and 200k random tokens."""
    import numpy as np
    import torch

    from gpt2kit.config import PRESETS
    from gpt2kit.data.tokens import TokenWriter
    from gpt2kit.formats import save_hf, write_vocab
    from gpt2kit.model import GPT
    from gpt2kit.tokenizer import gpt2_tokenizer

    model = GPT(PRESETS["124M"])
    model.init_weights(torch.Generator().manual_seed(0))
    save_hf(folder / "model", model.config, model.state_dict())
    write_vocab(folder / "model", gpt2_tokenizer())
    writer = TokenWriter(folder / "data.tokens", 50257)
    writer.write(np.random.default_rng(0).integers(0, 50257, 200_000))
    writer.close()
    return folder / "model", folder / "data.tokens", model.num_params()


def flops_per_token(n_params: int) -> int:
    """Training FLOPs a token counting attention too: 6N plus 12 x n_layer x T x n_embd for the QK^T and
    attention-times-V products (forward 4 L T C, backward twice that; PaLM, Chowdhery et al. 2022, appendix B).
    Causal masking could skip about half of it; this counts it all, as that formula does."""
    from gpt2kit.config import PRESETS

    c = PRESETS["124M"]
    return 6 * n_params + 12 * c.n_layer * T * c.n_embd


def plan(native_bf16: bool, emulated_bf16: bool, auto_dtype: str) -> list[tuple[str, str, str]]:
    """(label, case, dtype) to run; the defaults share the measurement of the dtype `auto` picks."""
    bf16 = native_bf16 or emulated_bf16
    rows = [("gpt2kit, --dtype float32", "gpt2kit", "float32")]
    if bf16:
        rows.append(("gpt2kit, --dtype bfloat16", "gpt2kit", "bfloat16"))
    if not any(dtype == auto_dtype for _, _, dtype in rows):
        rows.insert(0, ("gpt2kit, defaults (--dtype auto)", "gpt2kit", "auto"))
    rows.append(("transformers, fp32", "transformers", "float32"))
    if bf16:
        rows.append(("transformers, bf16 autocast", "transformers", "bfloat16"))
    return rows


def targets(results: dict, native_bf16: bool) -> list[dict]:
    """Issue 11's fine-tuning targets, against this run's own figures."""
    cases = {r["label"]: r for r in results["cases"]}
    default = cases[results["defaults_label"]]
    out = []
    if native_bf16:
        hf = cases.get("transformers, bf16 autocast")
        if hf:
            ratio = default["tokens_per_s"] / hf["tokens_per_s"]
            out.append(
                {
                    "target": "defaults >= 1.5x transformers with bf16 autocast",
                    "met": ratio >= 1.5,
                    "measured": f"{ratio:.2f}x",
                }
            )
        out.append(
            {
                "target": "defaults >= 85% of the bf16 matmul bound",
                "met": default["of_bound"] >= 0.85,
                "measured": f"{default['of_bound']:.0%}",
            }
        )
    else:
        out.append(
            {
                "target": "defaults >= 90% of the fp32 matmul bound (no native bf16)",
                "met": default["of_bound"] >= 0.90,
                "measured": f"{default['of_bound']:.0%} (counting attention FLOPs: {default['of_bound_with_attention']:.0%})",
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=CASES)
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--emulated-bf16", action="store_true", help="time the bf16 cases even where bf16 is emulated")
    p.add_argument("--gemms", action="store_true", help="also time the step's own matrix products (the ceiling)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 timed steps after 1, results not written")
    p.add_argument("--out", default=str(HERE / "train_results.json"))
    args = p.parse_args()
    if args.quick:
        args.steps, args.warmup, args.out = 2, 1, os.devnull
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    if args.case:
        result = CASES[args.case](args)
        result["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    import torch

    from gpt2kit.cpu.features import detect
    from gpt2kit.devices import auto_dtype

    cpu = detect()
    native = cpu.native_bf16
    auto = str(auto_dtype(torch.device("cpu"), cpu)).removeprefix("torch.")
    print(f"CPU: {cpu.describe()}; native bf16: {'yes' if native else 'no (bf16 is emulated)'}", file=sys.stderr)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu.describe(),
        "cpu_family": cpu.family,
        "native_bf16": native,
        "python": platform.python_version(),
        "batch": [B, T],
        "steps": args.steps,
        "auto_dtype": auto,
        "cases": [],
    }
    results["matmul"] = run_case("matmul")
    if args.gemms:
        results["gemms"] = run_case("gemms")
    with tempfile.TemporaryDirectory() as d:
        model, data, n_params = make_inputs(Path(d))
        results["parameters"] = n_params
        bound = {k: v / (6 * n_params) for k, v in results["matmul"]["flops"].items()}
        results["bound_tokens_per_s"] = bound
        results["flops_per_token"] = flops_per_token(n_params)
        for label, case, dtype in plan(native, args.emulated_bf16, auto):
            r = run_case(case, model=model, data=data, dtype=dtype, steps=args.steps, warmup=args.warmup)
            r.update(
                label=label,
                **{
                    f"of_bound{k}": r["tokens_per_s"] * f / r["matmul_flops"]
                    for k, f in (("", 6 * n_params), ("_with_attention", results["flops_per_token"]))
                },
            )
            results["cases"].append(r)
    results["defaults_label"] = next(
        r["label"] for r in results["cases"] if r["label"].startswith("gpt2kit") and r["matmul_dtype"] == auto
    )
    results["targets"] = targets(results, native)
    report(results, args, native)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


def report(results: dict, args, native: bool) -> None:
    mm, bound = results["matmul"], results["bound_tokens_per_s"]
    print(
        f"\nFine-tuning, 124M ({results['parameters'] / 1e6:.1f}M parameters), batch {B} x {T}, {args.steps} timed steps, "
        f"{mm['threads']} threads, torch {mm['torch']}"
    )
    print(f"CPU: {results['cpu']}")
    fp32, bf16 = (
        f"{mm['size'][k]} x {mm['size'][k]} {mm['flops'][k] / 1e9:.3g} GFLOP/s" for k in ("float32", "bfloat16")
    )
    print(
        f"matmul: fp32 {fp32}, bf16 {bf16}{'' if native else ' (emulated)'}; bound at 6N FLOPs a token: "
        f"fp32 {bound['float32']:.0f} tokens/s, bf16 {bound['bfloat16']:.3g} tokens/s"
    )
    print(
        f"Each case's bound is its own matmul rate (median of {mm['threads']}-thread {results['cases'][0]['matmul_size']}-square "
        f"matmuls run between its steps, in its process); 6N = {6 * results['parameters'] / 1e6:.0f}M FLOPs a token, "
        f"with attention {results['flops_per_token'] / 1e6:.0f}M."
    )
    print(
        "\n| case | precision | tokens/s | matmul GFLOP/s in its run | % of bound at 6N | % of bound with attention "
        "| peak RSS MB |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    )
    for r in results["cases"]:
        label = r["label"] + (
            " = the defaults (auto)" if r["label"] == results["defaults_label"] and "auto" not in r["label"] else ""
        )
        print(
            f"| {label} | {r['precision']} | {r['tokens_per_s']:.0f} | {r['matmul_flops'] / 1e9:.3g} | {r['of_bound']:.0%} "
            f"| {r['of_bound_with_attention']:.0%} | {r['peak_rss_MB']:.0f} |"
        )
    if not native and not args.emulated_bf16:
        print(
            "\nbf16 fine-tuning not timed: this CPU has no AVX512-BF16/AMX, so bf16 is emulated "
            "(see the bf16 matmul rate); pass --emulated-bf16 to time it anyway."
        )
    if "gemms" in results:
        g = results["gemms"]
        print(
            f"\nThe step's own matrix products against the 2048-square one ({g['square_GFLOPs']:.3g} GFLOP/s), "
            f"interleaved: FLOP-weighted {g['weighted_GFLOPs']:.3g} GFLOP/s, {g['ceiling']:.0%} of the square's: "
            f"the most an fp32 step on these matmuls reaches.\n\n| product | GFLOP/s | of the square's |\n| --- | ---: | ---: |"
        )
        for r in g["products"]:
            print(f"| {r['product']} | {r['GFLOPs']:.3g} | {r['of_square']:.0%} |")
    print("\n| target | met | measured |\n| --- | --- | --- |")
    for t in results["targets"]:
        print(f"| {t['target']} | {'yes' if t['met'] else '**no**'} | {t['measured']} |")


if __name__ == "__main__":
    main()
