"""gpt2kit against llama.cpp at batch 1, in one run: the issue-14 comparison without the rest of run.py.

    pip install llama-cpp-python
    python benchmarks/llama_peer.py      # writes benchmarks/llama_results.json and prints a table

The same cases as run.py (each in its own process, on the same random 124M-shaped weights; llama.cpp runs
gpt2kit's own GGUF export of them). Targets: gpt2kit's default at least as fast as llama.cpp's f16, and
gpt2kit's fastest dtype at least as fast as llama.cpp's q8_0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import HERE, run_case

DTYPES = ("auto", "float16", "int8", "float32")


def _random_124m(folder: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"""
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained({str(folder)!r})
""",
        ],
        check=True,
        capture_output=True,
    )
    from gpt2kit.paths import ASSETS_DIR

    shutil.copy(ASSETS_DIR / "encoder.json", folder / "vocab.json")
    shutil.copy(ASSETS_DIR / "vocab.bpe", folder / "merges.txt")


def main() -> None:
    results = {"machine": run_case("machine")}
    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "gpt2-124M-random"
        _random_124m(model)
        for dt in DTYPES:
            results[f"gen_gpt2kit_{dt}_b1"] = run_case("gen-gpt2kit", model=model, batch=1, dtype=dt)
        for dt in ("f16", "q8_0"):
            results[f"gen_llama_{dt}_b1"] = run_case("gen-llama", model=model, dtype=dt)
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_described": results["machine"]["cpu"],
        "family": results["machine"]["family"],
    }
    (HERE / "llama_results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        (k.removeprefix("gen_").removesuffix("_b1"), v["tokens_per_s"])
        for k, v in results.items()
        if k.startswith("gen_")
    ]
    print(f"CPU: {results['meta']['cpu_described']}\n\n| batch 1 | tokens/s |\n| --- | ---: |")
    for name, tps in rows:
        print(f"| {name} | {tps:.1f} |")


if __name__ == "__main__":
    main()
