"""gpt2kit against OpenVINO GenAI (and llama.cpp) at batch 1, 8 and 16, and a 256-token prompt pass against the
matmul rate: issue 27's generate targets, checked in one run on this machine.

    python -m venv ~/ov && ~/ov/bin/pip install torch==2.13.0 "optimum-intel[openvino]" openvino-genai
    ~/ov/bin/pip uninstall -y torchvision        # built for another torch, it breaks transformers' import
    pip install llama-cpp-python                             # optional: llama.cpp's rows at batch 1
    python benchmarks/batch.py --openvino-python ~/ov/bin/python   # writes benchmarks/batch_results.json

OpenVINO GenAI and optimum-intel live in a virtual environment of their own: optimum-intel wants another
transformers than gpt2kit's tests, and an unpinned torch pulls CUDA. Without --openvino-python the OpenVINO rows
are left out (and their targets reported as not measured). Every case runs in its own process, on the same random
124M-shaped weights as run.py: transformers builds them, optimum-intel exports them to OpenVINO IR twice (int8
weights, and fp32 weights, which OpenVINO computes in its default precision for this CPU: bf16 where the CPU
has it), llama.cpp runs gpt2kit's GGUF export. 32-token prompts, 128 new tokens, top-k 40, no stop at EOS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

from llama_peer import _random_124m
from run import HERE, PROMPT_PASS, run_case

BATCHES = (1, 8, 16)
OURS = ("auto", "int8", "float16")  # the default, and the weight formats that are fastest on some CPU
SHARE_OF_MATMUL = 0.8  # the prompt pass's target, as a share of the matmul rate measured in the same run


def measure(args) -> dict:
    """Every case --rounds times, the order reversed every other round, so a change in the machine's speed
    during the run falls on every library alike; each figure is the median of its rounds."""
    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "gpt2-124M-random"
        _random_124m(model)
        irs = _export_openvino(model, Path(d), args.openvino_python)
        cases = {
            f"gen_gpt2kit_{dt}_b{b}": ("gen-gpt2kit", {"model": model, "batch": b, "dtype": dt})
            for b in BATCHES
            for dt in OURS
        }
        cases |= {
            f"gen_openvino_{name}_b{b}": ("gen-openvino", {"python": args.openvino_python, "model": ir, "batch": b})
            for b in BATCHES
            for name, ir in irs.items()
        }
        if importlib.util.find_spec("llama_cpp") is not None:
            cases |= {f"gen_llama_{dt}_b1": ("gen-llama", {"model": model, "dtype": dt}) for dt in ("f16", "q8_0")}
        cases |= {f"prompt_gpt2kit_{dt}": ("prompt-gpt2kit", {"model": model, "dtype": dt}) for dt in OURS}
        cases["machine"] = ("machine", {})
        runs: dict[str, list[dict]] = {key: [] for key in cases}
        for r in range(args.rounds):
            for key in list(cases) if r % 2 == 0 else reversed(list(cases)):
                name, kw = cases[key]
                runs[key].append(run_case(name, **kw))
    results = {key: _median(rs) for key, rs in runs.items()}
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_described": results["machine"]["cpu"],
        "rounds": args.rounds,
    }
    return results


def _median(runs: list[dict]) -> dict:
    """The first run's fields, with each figure the median over the runs (and the runs' figures kept)."""
    out = dict(runs[0])
    for field in (
        "tokens_per_s",
        "GFLOPs",
        "read_GBps",
        "matmul_float32_GFLOPs",
        "matmul_bfloat16_GFLOPs",
        "matrices_GFLOPs",
        "fp32_gemm_GFLOPs",
    ):
        if field in out:
            out[field] = statistics.median(r[field] for r in runs)
            out[f"{field}_runs"] = [round(r[field], 2) for r in runs]
    return out


def _export_openvino(model: Path, workdir: Path, python: str | None) -> dict[str, Path]:
    """{"int8": IR folder, "fp32": IR folder}, or {} without the peer."""
    if not python:
        return {}
    irs = {w: workdir / w for w in ("int8", "fp32")}
    for weights, ir in irs.items():
        run_case("export-openvino", python=python, model=model, dtype=weights, ir=ir)
    return irs


def tokens(r: dict, key: str) -> float | None:
    return r[key]["tokens_per_s"] if key in r else None


# Multiply-adds of weights per token of 124M: its blocks' matrices, and with the tied head, what a generated
# token costs (tokens/s times twice that is the rate, in GFLOP/s, at which a whole generate gets through them).
BLOCK_WEIGHTS = 12 * 12 * 768**2
WEIGHTS_PER_TOKEN = BLOCK_WEIGHTS + 50257 * 768


def targets(r: dict) -> list[tuple[str, bool | None, str, str]]:
    """(target, met or None if a side was not measured, the figures, why: measured, for a target not met)."""
    checks = []
    for b in BATCHES:
        fastest = max((tokens(r, f"gen_gpt2kit_{dt}_b{b}"), dt) for dt in OURS)
        auto = tokens(r, f"gen_gpt2kit_auto_b{b}")
        ov_best = max(((v, n) for n in ("int8", "fp32") if (v := tokens(r, f"gen_openvino_{n}_b{b}"))), default=None)
        ov_default = tokens(r, f"gen_openvino_fp32_b{b}")
        checks.append(_vs(r, b, f"batch {b}: gpt2kit's fastest >= OpenVINO's fastest", fastest, ov_best))
        checks.append(
            _vs(
                r,
                b,
                f"batch {b}: `--dtype auto` >= OpenVINO in its default precision",
                (auto, "auto"),
                ov_default and (ov_default, "fp32 IR"),
            )
        )
    for peer, ours in (("f16", "auto"), ("q8_0", "int8")):
        llama = tokens(r, f"gen_llama_{peer}_b1")
        checks.append(
            _vs(
                r,
                1,
                f"batch 1: `--dtype {ours}` >= llama.cpp {peer}",
                (tokens(r, f"gen_gpt2kit_{ours}_b1"), ours),
                llama and (llama, peer),
                "llama.cpp",
            )
        )
    m = r["machine"]
    rate = m["matmul_bfloat16_GFLOPs"] if m["fast_bf16"] else m["matmul_float32_GFLOPs"]
    kind = "bf16" if m["fast_bf16"] else "fp32"
    for dt in OURS:
        p = r[f"prompt_gpt2kit_{dt}"]
        share = p["GFLOPs"] / rate
        checks.append(
            (
                f"{PROMPT_PASS}-token prompt pass, `--dtype {dt}` ({p['dtype']}): >= {SHARE_OF_MATMUL:.0%} of the {kind} "
                "matmul rate",
                share >= SHARE_OF_MATMUL,
                f"{p['GFLOPs']:.0f} of {rate:.0f} GFLOP/s ({share:.0%})",
                _prompt_why(p, rate, kind) if share < SHARE_OF_MATMUL else "",
            )
        )
    return checks


def _vs(
    r: dict, b: int, name: str, ours: tuple, peer: tuple | None, peer_name: str = "OpenVINO"
) -> tuple[str, bool | None, str, str]:
    if peer is None or ours[0] is None:
        return name, None, "not measured (peer not installed)", ""
    met = ours[0] >= peer[0]
    figures = f"{ours[0]:.0f} ({ours[1]}) vs {peer[0]:.0f} ({peer[1]}) tokens/s"
    why = "" if met else _generate_why(r.get(f"gen_gpt2kit_{ours[1]}_b{b}", {}), b, f"{peer_name} {peer[1]}", peer[0])
    return name, met, figures, why


def _generate_why(case: dict, b: int, peer_name: str, peer_tokens_per_s: float) -> str:
    """Whether the products themselves are the gap: gpt2kit's matrices alone at b rows, against the rate at
    which the peer's whole generate gets through the same matrices (and gpt2kit's whole generate)."""
    if "matrices_GFLOPs" not in case:
        return ""
    mat, ours, theirs = case["matrices_GFLOPs"], _rate(case["tokens_per_s"]), _rate(peer_tokens_per_s)
    where = (
        "the products themselves are the gap"
        if mat < theirs
        else "the products alone are faster than the peer's whole step: the time goes outside them"
    )
    return (
        f"{case['dtype']} matrices alone at {b} row{'s' * (b > 1)}: {mat:.0f} GFLOP/s; whole generate (generated "
        f"tokens' products over its whole time, prefill included): {ours:.0f} here, {theirs:.0f} {peer_name}: {where}"
    )


def _rate(tokens_per_s: float) -> float:
    return 2 * WEIGHTS_PER_TOKEN * tokens_per_s / 1e9


def _prompt_why(p: dict, rate: float, kind: str) -> str:
    """Where a prompt pass's time goes: its blocks' matrices as the model runs them (reduced weights widened
    first), the same shapes as plain fp32 GEMMs, and the share of the pass outside the matrices."""
    if "matrices_GFLOPs" not in p:
        return ""
    flops = 2 * BLOCK_WEIGHTS * PROMPT_PASS
    outside = 1 - flops / p["matrices_GFLOPs"] / 1e9 / (PROMPT_PASS / p["tokens_per_s"])
    return (
        f"the blocks' matrices run at {p['matrices_GFLOPs']:.0f} GFLOP/s as the model runs them, and "
        f"{p['fp32_gemm_GFLOPs']:.0f} ({p['fp32_gemm_GFLOPs'] / rate:.0%} of the {kind} {rate:.0f}) as fp32 GEMMs of the "
        f"same shapes; attention, LayerNorm, GELU and the cache take {max(outside, 0):.0%} of the pass"
    )


def report(r: dict) -> str:
    lines = [
        f"CPU: {r['meta']['cpu_described']}; measured {r['meta']['date']}, medians of {r['meta'].get('rounds', 1)} rounds"
    ]
    versions = {v["version"] for k, v in r.items() if k.startswith("gen_openvino_")}
    if versions:
        precision = {v["precision"] for k, v in r.items() if k.startswith("gen_openvino_")}
        lines.append(f"OpenVINO GenAI {', '.join(sorted(versions))}, CPU inference precision {', '.join(precision)}")
    lines += [
        "",
        "| tokens/s | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
        "| --- |" + " ---: |" * len(BATCHES),
    ]
    names = sorted({k.rsplit("_b", 1)[0] for k in r if k.startswith("gen_")})
    for name in names:
        cells = [f"{v:.0f}" if (v := tokens(r, f"{name}_b{b}")) else "–" for b in BATCHES]
        label = name.removeprefix("gen_").replace("_", " ", 1)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| target | met | measured | why, where not met (measured in the same run) |",
        "| --- | --- | --- | --- |",
    ]
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    lines += [f"| {name} | {verdict[ok]} | {val} | {why} |" for name, ok, val, why in targets(r)]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--openvino-python",
        help="the interpreter of a virtual environment with openvino-genai and "
        "optimum-intel (see above); without it the OpenVINO rows are left out",
    )
    p.add_argument("--rounds", type=int, default=3, help="runs of every case, interleaved; figures are medians")
    p.add_argument("--out", default=str(HERE / "batch_results.json"))
    p.add_argument("--report", help="print the report of an earlier results file instead of measuring")
    args = p.parse_args()
    results = json.loads(Path(args.report).read_text()) if args.report else measure(args)
    if not args.report:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))


if __name__ == "__main__":
    main()
