"""How long gpt2kit takes to start: `import gpt2kit`, `gpt2kit --help`, and one token of `gpt2kit generate`.

    python benchmarks/startup.py [--repeats 5] [--out startup.json]

People call `gpt2kit generate` in loops and scripts, so start-up is the latency they feel. Every
figure is a fresh Python process, timed from outside (wall clock, start to exit), so it includes
the interpreter's own start; `python -c pass` and `import torch` are printed beside them as the
floor. The generate rows use the bundled model with a private GPT2KIT_HOME: the first run there
builds the CPU kernels and measures `--dtype auto` once ("first run"), the rest reuse that cache.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

GENERATE = [sys.executable, "-m", "gpt2kit", "generate", "Hello", "--length", "1", "--seed", "1"]
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "import gpt2kit": [sys.executable, "-c", "import gpt2kit"],
    "gpt2kit --help": [sys.executable, "-m", "gpt2kit", "--help"],
    "gpt2kit generate --help": [sys.executable, "-m", "gpt2kit", "generate", "--help"],
    "gpt2kit generate, 1 token": GENERATE,
}
# load() alone, beyond `import torch` (the target: at most 0.2 s)
LOAD = ("import time, torch; t = time.perf_counter(); import gpt2kit; gpt2kit.load(); "
        "print(time.perf_counter() - t)")


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return seconds


def load_seconds(env: dict) -> float:
    r = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each case (the first of each is a warm-up)")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "GPT2KIT_HOME": home, "GPT2KIT_OFFLINE": "1"}
        results = {"first run: gpt2kit generate, 1 token": [timed(GENERATE, env)]}  # kernels built, dtype measured
        for name, cmd in CASES.items():
            timed(cmd, env)  # warm-up: the page cache holds the files afterwards
            results[name] = [timed(cmd, env) for _ in range(args.repeats)]
        results["load() beyond import torch"] = [load_seconds(env) for _ in range(args.repeats)]
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"seconds over {args.repeats} runs (fresh process each)\n")
    print(f"| {'case':<40} | {'best':>6} | {'median':>6} |")
    print(f"| {'-' * 40} | {'-' * 6}:| {'-' * 6}:|")
    for name, times in results.items():
        print(f"| {name:<40} | {min(times):6.2f} | {statistics.median(times):6.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": platform.machine(), "cores": os.cpu_count(), "seconds": results}, f, indent=2)


if __name__ == "__main__":
    main()
