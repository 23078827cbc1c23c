"""The one engine against the commit before it: `generate` tokens/s at batch 1 and 8, interleaved in one run.

    python benchmarks/engine.py                       # against --baseline-ref, 3 rounds
    python benchmarks/engine.py --rounds 5 --dtype int8

Each round runs benchmarks/run.py's generate workload (124M shapes, random weights, 32-token prompts, 128
new tokens, top-k 40) once per tree and batch size, alternating the trees, each in its own process, and
reports tokens per second of wall time and of CPU time (at --threads 1 the CPU time counts the work done,
which other processes on a busy machine disturb far less than the wall clock). The
baseline is the package at --baseline-ref, checked out into a temporary git worktree. Prints each figure,
the medians and new/baseline ratios, with the CPU's flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent


CHILD = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
import gpt2kit
lm = gpt2kit.load(sys.argv[1], device="cpu", dtype=sys.argv[3])
g = torch.Generator().manual_seed(0)
batch = int(sys.argv[2])
prompts = [lm.tokenizer.decode(row) for row in torch.randint(0, 50000, (batch, 32), generator=g).tolist()]
kw = dict(top_k=40, stop_at_eot=False, batch_size=batch, seed=1)
lm.generate(prompts, length=8, **kw)
wall, cpu = time.perf_counter(), time.process_time()
lm.generate(prompts, length=128, **kw)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"wall": batch * 128 / wall, "cpu": batch * 128 / cpu, "path": lm.info.get("cpu_path")}))
"""


def case(src: Path, model: Path, batch: int, dtype: str, threads: int) -> dict:
    """tokens per second of wall time and per second of CPU time (the second is what a busy machine
    disturbs least at one thread: it counts the work, not the waiting)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(batch), dtype, str(threads)],
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-ref", default="fa04d05", help="the commit before the one engine")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads in each case (1: CPU time is meaningful)")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    from serve import cpu_line, random_124m

    with tempfile.TemporaryDirectory() as d:
        base = Path(d) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline_ref],
            check=True,
            capture_output=True,
        )
        try:
            model = Path(random_124m(Path(d) / "model"))
            trees = {"baseline": base / "src", "engine": ROOT / "src"}
            figures = {(t, b): [] for t in trees for b in args.batches}
            for r in range(args.rounds):
                for b in args.batches:
                    for name in trees if r % 2 == 0 else reversed(list(trees)):
                        figures[name, b].append(case(trees[name], model, b, args.dtype, args.threads))
                        print(f"round {r} batch {b} {name}: {figures[name, b][-1]}", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    print(cpu_line())
    print(
        f"dtype {args.dtype}, {args.threads} thread(s), baseline {args.baseline_ref}, {args.rounds} rounds (medians)\n"
    )
    print(
        "| batch | measure | baseline tokens/s | engine tokens/s | engine / baseline |\n| ---: | --- | ---: | ---: | ---: |"
    )
    for b in args.batches:
        for measure in ("cpu", "wall"):
            old = statistics.median(f[measure] for f in figures["baseline", b])
            new = statistics.median(f[measure] for f in figures["engine", b])
            print(f"| {b} | per {measure} second | {old:.1f} | {new:.1f} | {new / old:.3f} |")


if __name__ == "__main__":
    main()
