"""The one engine against the commit before it: `generate` tokens/s at batch 1 and 8, interleaved in one run.

    python benchmarks/engine.py                       # against --baseline-ref, 3 rounds
    python benchmarks/engine.py --rounds 5 --dtype int8

Each round runs benchmarks/run.py's gen-gpt2kit case (124M shapes, random weights, 32-token prompts, 128
new tokens, top-k 40) once per tree and batch size, alternating the trees, each in its own process. The
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


def case(src: Path, model: Path, batch: int, dtype: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run(
        [
            sys.executable,
            str(HERE / "run.py"),
            "--case",
            "gen-gpt2kit",
            f"--model={model}",
            f"--batch={batch}",
            f"--dtype={dtype}",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-ref", default="fa04d05", help="the commit before the one engine")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtype", default="auto")
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
                        figures[name, b].append(case(trees[name], model, b, args.dtype))
                        print(f"round {r} batch {b} {name}: {figures[name, b][-1]:.1f} tokens/s", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    print(cpu_line())
    print(f"dtype {args.dtype}, baseline {args.baseline_ref}, {args.rounds} rounds (medians, tokens/s)\n")
    print("| batch | baseline | engine | engine / baseline |\n| ---: | ---: | ---: | ---: |")
    for b in args.batches:
        old, new = statistics.median(figures["baseline", b]), statistics.median(figures["engine", b])
        print(f"| {b} | {old:.1f} | {new:.1f} | {new / old:.3f} |")


if __name__ == "__main__":
    main()
