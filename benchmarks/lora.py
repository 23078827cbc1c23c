"""LoRA against full fine-tuning on a 124M-shaped GPT-2: tokens/s and peak RSS, in the same run.

    python benchmarks/lora.py            # writes benchmarks/lora_results.json
    python benchmarks/lora.py --quick    # a smoke run: a 2-layer model, a few short steps, nothing written

Random weights of the published shape (nothing is downloaded), batch 4 x 256, AdamW at lr 1e-4,
gradients clipped to 1, each with `--dtype auto`, its own default: on a CPU without native bf16 full
fine-tuning runs in fp32 and LoRA computes in fp32 over a half-width frozen base (fp16 where the CPU has
F16C; training/lora.py says why). `--dtype float32` compares the two on an fp32 base.
Each case runs `gpt2kit.finetune` in its own process; its tokens/s is its own step time
(metrics.csv's elapsed_s, without saving) after untimed warm-up steps, its peak RSS the process's
ru_maxrss (loading included). LoRA: rank 16 on every matrix (c_attn, c_proj, c_fc), the base frozen.

Issue 13's target: LoRA >= 1.3x full fine-tuning's tokens/s with at most half its peak memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
LR = 1e-4


def make_inputs(folder: Path, quick: bool) -> tuple[Path, Path, int]:
    """A random GPT-2 of the 124M shape (a 2-layer one for --quick) as a model folder, and 200k random tokens."""
    import numpy as np
    import torch

    from gpt2kit.config import PRESETS
    from gpt2kit.data.tokens import TokenWriter
    from gpt2kit.formats import save_hf, write_vocab
    from gpt2kit.model import GPT
    from gpt2kit.tokenizer import gpt2_tokenizer

    config = PRESETS["124M"].replace(n_layer=2, n_embd=128, n_head=2) if quick else PRESETS["124M"]
    model = GPT(config)
    model.init_weights(torch.Generator().manual_seed(0))
    save_hf(folder / "model", model.config, model.state_dict())
    write_vocab(folder / "model", gpt2_tokenizer())
    writer = TokenWriter(folder / "data.tokens", 50257)
    writer.write(np.random.default_rng(0).integers(0, 50257, 200_000))
    writer.close()
    return folder / "model", folder / "data.tokens", model.num_params()


def case(args) -> dict:
    """One fine-tuning run in this process: full when --rank is 0, else LoRA of that rank."""
    import gpt2kit

    lora = {"lora_rank": args.rank, "lora_targets": args.targets} if args.rank else {}
    with tempfile.TemporaryDirectory() as d:
        gpt2kit.finetune(
            dataset=args.data,
            model=args.model,
            checkpoint_dir=Path(d),
            steps=args.warmup + args.steps,
            batch_size=args.batch,
            context_length=args.context,
            learning_rate=LR,
            dtype=args.dtype,
            device="cpu",
            print_every=args.warmup,
            save_every=10**9,
            progress=False,
            gradient_checkpointing=args.checkpointing,
            **lora,
        )
        with open(Path(d) / "run1" / "metrics.csv", newline="") as f:
            elapsed = {int(r["step"]): float(r["elapsed_s"]) for r in csv.DictReader(f) if r["loss"]}
    seconds = elapsed[args.warmup + args.steps] - elapsed[args.warmup]
    return {
        "tokens_per_s": args.steps * args.batch * args.context / seconds,
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_case(args, rank: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--case",
        "--model",
        str(args.model),
        "--data",
        str(args.data),
        "--rank",
        str(rank),
        "--targets",
        args.targets,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--context",
        str(args.context),
        "--dtype",
        args.dtype,
    ]
    if args.checkpointing:
        cmd.append("--checkpointing")
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GPT2KIT_OFFLINE": "1"})
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"benchmark case rank={rank} failed")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"  {'LoRA rank ' + str(rank) if rank else 'full'}: {result} ({time.time() - t:.0f} s)", file=sys.stderr)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--rank", type=int, default=16, help="the LoRA rank (default 16)")
    p.add_argument("--targets", default="c_attn,c_proj,c_fc")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--dtype", default="auto", help="the model's dtype in both cases (LoRA: the frozen base's)")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in both cases")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: a 2-layer model, 1 warm-up and 2 timed steps of 1 x 64; no file",
    )
    p.add_argument("--out", default=str(HERE / "lora_results.json"))
    args = p.parse_args()
    if args.case:
        print(json.dumps(case(args)))
        return
    if args.quick:
        args.steps, args.warmup, args.batch, args.context = 2, 1, 1, 64
    from gpt2kit.cpu.features import detect

    with tempfile.TemporaryDirectory() as d:
        args.model, args.data, n_params = make_inputs(Path(d), args.quick)
        full, lora = run_case(args, 0), run_case(args, args.rank)
    speed = lora["tokens_per_s"] / full["tokens_per_s"]
    memory = lora["peak_rss_MB"] / full["peak_rss_MB"]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": detect().describe(),
        "params": n_params,
        "batch": args.batch,
        "context": args.context,
        "dtype": args.dtype,
        "rank": args.rank,
        "targets": args.targets,
        "gradient_checkpointing": args.checkpointing,
        "full": full,
        "lora": lora,
        "speed_ratio": round(speed, 3),
        "memory_ratio": round(memory, 3),
        "target": {
            "text": "LoRA >= 1.3x full's tokens/s with <= 0.5x its peak RSS",
            "met": speed >= 1.3 and memory <= 0.5,
        },
    }
    print(json.dumps(results, indent=2))
    if not args.quick:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
