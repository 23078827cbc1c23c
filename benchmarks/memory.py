"""Peak memory and speed of loading, generating and fine-tuning every published GPT-2 size on this machine.

    python benchmarks/memory.py                      # 124M, 355M, 774M, 1558M: writes memory.json and MEMORY.md
    python benchmarks/memory.py --quick              # 124M only, a few tokens: a smoke run
    python benchmarks/memory.py --sizes 1558M --only generate --dtypes int8 float16
    python benchmarks/memory.py --sizes 1558M --only finetune --kinds lora --steps 2

Random weights of the published shapes are written once into a cache folder (--cache) as a Hugging Face
folder (config.json + model.safetensors, fp32 like the published checkpoints), tensor by tensor, so the
writer never holds more than one tensor. Every measurement then runs in a fresh process:

- baseline: Python, torch and gpt2kit imported, the CPU kernels and the tokenizer loaded: everything a
  load costs except the weights. Reported on its own; the other figures include it.
- load: `gpt2kit.load(folder, dtype=D)`: peak RSS (VmHWM: anonymous and file-mapped pages alike), the
  bytes of the loaded model's tensors (its size in its final dtype), and seconds.
- generate: the load, then N new tokens after a 32-token prompt: peak RSS and decoding tokens/s, next to
  the bound this machine's read bandwidth sets (bytes of the matrices read per token).
- finetune (full, and LoRA where this tree's `gpt2kit finetune` has --lora-rank; --kinds picks): the real
  command in a child process, batch 1 x 256, gradient checkpointing, `--dtype auto` (LoRA: rank 16 on every
  matrix, the frozen base at half width on a CPU); peak RSS of that child (ru_maxrss) and tokens/s from its
  metrics.csv (steps after the first). Full fine-tuning that cannot fit (16 bytes a parameter for fp32
  weights, gradients and AdamW's moments, over 90% of this machine's memory) is not run: its row says
  what it needs, computed.
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
# GPT-2's published shapes: (n_embd, n_layer, n_head); n_vocab 50257, n_ctx 1024 for all.
SIZES = {"124M": (768, 12, 12), "355M": (1024, 24, 16), "774M": (1280, 36, 20), "1558M": (1600, 48, 25)}
# auto-first: `--dtype auto` on a machine that has not yet measured this model (a fresh GPT2KIT_HOME with
# the built kernels linked in), so its fidelity check against fp32 runs; auto: with that remembered.
DTYPES = ("float32", "float16", "int8", "auto-first", "auto")
PROMPT_TOKENS, TRAIN_T = 32, 256
GB = 1e9


# --- the random model, written once -----------------------------------------------------------------


def hf_tensors(n_embd: int, n_layer: int) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of a GPT2LMHeadModel checkpoint, HF names and (in, out) Conv1D shapes."""
    C = n_embd
    out = [("transformer.wte.weight", (50257, C)), ("transformer.wpe.weight", (1024, C))]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        out += [
            (p + "ln_1.weight", (C,)),
            (p + "ln_1.bias", (C,)),
            (p + "attn.c_attn.weight", (C, 3 * C)),
            (p + "attn.c_attn.bias", (3 * C,)),
            (p + "attn.c_proj.weight", (C, C)),
            (p + "attn.c_proj.bias", (C,)),
            (p + "ln_2.weight", (C,)),
            (p + "ln_2.bias", (C,)),
            (p + "mlp.c_fc.weight", (C, 4 * C)),
            (p + "mlp.c_fc.bias", (4 * C,)),
            (p + "mlp.c_proj.weight", (4 * C, C)),
            (p + "mlp.c_proj.bias", (C,)),
        ]
    return out + [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], fill) -> None:
    """The safetensors format (an 8-byte header length, a JSON header, the raw bytes) written one tensor
    at a time: fill(name, shape) -> an fp32 tensor, dropped once written."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = 4
        for s in shape:
            n *= s
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape in tensors:
            f.write(fill(name, shape).contiguous().numpy().tobytes())
    os.replace(tmp, path)


_POOL = []


def random_fill(name: str, shape: tuple[int, ...]):
    """GPT-2's initialisation (normal, std 0.02; LayerNorms 1 and 0): a pool of 2^20 normal values, rolled
    per tensor and repeated, since drawing 1.5 billion normals takes minutes and the values change neither
    memory nor speed."""
    import torch

    if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return torch.ones(shape)
    if len(shape) == 1:
        return torch.zeros(shape)
    if not _POOL:
        _POOL.append(torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02)
    pool = _POOL[0].roll(sum(map(ord, name)) * 7919 % (1 << 20))
    flat = torch.empty(shape).view(-1)
    for i in range(0, flat.numel(), pool.numel()):
        flat[i : i + pool.numel()] = pool[: flat.numel() - i]
    return flat.view(shape)


def model_folder(cache: Path, size: str) -> Path:
    """cache/SIZE: config.json + model.safetensors of random weights of that shape (written once)."""
    folder = cache / size
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    n_embd, n_layer, n_head = SIZES[size]
    from gpt2kit.config import GPTConfig

    cfg = GPTConfig(n_vocab=50257, n_ctx=1024, n_embd=n_embd, n_head=n_head, n_layer=n_layer)
    print(f"writing random {size} weights to {folder}", file=sys.stderr)
    write_safetensors(folder / "model.safetensors", hf_tensors(n_embd, n_layer), random_fill)
    (folder / "config.json").write_text(json.dumps(cfg.to_hf_config(), indent=2))
    return folder


def token_file(cache: Path) -> Path:
    path = cache / "random.tokens"
    if not path.is_file():
        import numpy as np

        from gpt2kit.data.tokens import TokenWriter

        w = TokenWriter(path, 50257)
        w.write(np.random.default_rng(0).integers(0, 50257, 200_000))
        w.close()
    return path


# --- the cases, each in its own process --------------------------------------------------------------


def peak_mb() -> float:
    from gpt2kit.formats.mapped import peak_resident_bytes

    return peak_resident_bytes() / 1e6


def case_baseline(args) -> dict:
    import torch  # noqa: F401

    import gpt2kit.lm  # noqa: F401
    from gpt2kit.cpu import detect
    from gpt2kit.cpu.kernels import load as load_kernels
    from gpt2kit.tokenizer import gpt2_tokenizer

    load_kernels(detect())
    gpt2_tokenizer().encode("hello")
    return {"peak_rss_MB": peak_mb()}


def model_bytes(model) -> int:
    """Bytes of a loaded model's tensors (parameters and buffers), memory shared between them counted once."""
    seen, total = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        except (NotImplementedError, RuntimeError):  # oneDNN's blocked layout: count its own bytes
            key = (id(t), t.numel() * t.element_size())
        if key not in seen:
            seen.add(key)
            total += key[1]
    return total


def matrix_bytes(model) -> int:
    """Bytes decoding reads per token: every matrix (blocks and head), not the embedding tables."""
    tensors = {n: t for n, t in model.named_buffers()} | {n: t for n, t in model.named_parameters()}
    return sum(
        t.numel() * t.element_size()
        for n, t in tensors.items()
        if (n.startswith("head.") or ".c_" in n) and t.dim() >= 1 and "bias" not in n
    )


def case_load(args) -> dict:
    import gpt2kit

    t = time.perf_counter()
    lm = gpt2kit.load(args.folder, device="cpu", dtype=args.dtype)
    seconds = time.perf_counter() - t
    return {
        "peak_rss_MB": peak_mb(),
        "model_MB": model_bytes(lm.model) / 1e6,
        "load_s": seconds,
        "path": lm.info.get("cpu_path"),
    }


def case_generate(args) -> dict:
    import gpt2kit
    from gpt2kit.generation import Piece, Sample

    lm = gpt2kit.load(args.folder, device="cpu", dtype=args.dtype)
    prompt = lm.tokenizer.decode(list(range(1000, 1000 + PROMPT_TOKENS)))
    stamps, tokens = [], 0
    for ev in lm.samples(prompt, length=args.tokens, temperature=0, stop_at_eot=False, seed=0):
        if isinstance(ev, Piece):
            stamps.append(time.perf_counter())
        elif isinstance(ev, Sample):
            tokens = len(ev.tokens)
    # Decoding speed: from the first streamed piece (the prompt's prefill is done) to the last.
    rate = (tokens - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return {
        "peak_rss_MB": peak_mb(),
        "model_MB": model_bytes(lm.model) / 1e6,
        "tokens_per_s": rate,
        "bytes_per_token_MB": matrix_bytes(lm.model) / 1e6,
        "path": lm.info.get("cpu_path"),
        "new_tokens": tokens,
    }


def case_bandwidth(args) -> dict:
    import torch

    x = torch.ones(256 * 1024 * 1024, dtype=torch.float32)  # 1 GiB, far beyond the caches
    x.sum()
    t = time.perf_counter()
    for _ in range(5):
        x.sum()
    return {"read_GBps": 5 * x.numel() * 4 / (time.perf_counter() - t) / 1e9}


def finetune_command(args, run_dir: Path, lora: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "gpt2kit",
        "finetune",
        "--dataset",
        str(args.dataset),
        "--model",
        str(args.folder),
        "--steps",
        str(args.steps),
        "--batch-size",
        "1",
        "--context-length",
        str(TRAIN_T),
        "--gradient-checkpointing",
        "--checkpoint-dir",
        str(run_dir),
        "--save-every",
        "100000",
        "--print-every",
        "1",
        "--no-progress",
        "--dtype",
        args.train_dtype,
    ]
    return cmd + (["--lora-rank", "16"] if lora else [])


def case_finetune(args) -> dict:
    """The real `gpt2kit finetune` in a child; this process only waits, so RUSAGE_CHILDREN is that child's."""
    lora = args.dtype == "lora"
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.run(finetune_command(args, Path(d), lora), capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
        rows = [r for p in Path(d).rglob("metrics.csv") for r in csv.DictReader(p.open()) if r.get("loss")]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3  # kB on Linux
    steps = sorted((int(r["step"]), float(r["elapsed_s"])) for r in rows)
    rate = (len(steps) - 1) * TRAIN_T / (steps[-1][1] - steps[0][1]) if len(steps) > 1 else float("nan")
    return {"peak_rss_MB": peak, "tokens_per_s": rate, "steps": len(steps)}


CASES = {
    "baseline": case_baseline,
    "load": case_load,
    "generate": case_generate,
    "bandwidth": case_bandwidth,
    "finetune": case_finetune,
}


def fresh_home_for_auto(args) -> None:
    """auto-first: a private GPT2KIT_HOME without tuning, sharing the real home's built kernels."""
    if args.dtype != "auto-first":
        return
    from gpt2kit.paths import kernels_dir

    real_kernels = kernels_dir()
    home = Path(tempfile.mkdtemp(prefix="gpt2kit-home-"))
    os.environ["GPT2KIT_HOME"] = str(home)
    kernels_dir().parent.mkdir(parents=True, exist_ok=True)
    if real_kernels.exists():
        kernels_dir().symlink_to(real_kernels, target_is_directory=True)
    args.dtype = "auto"


def child_main(args) -> None:
    fresh_home_for_auto(args)
    out = CASES[args.case](args)
    print("RESULT " + json.dumps(out))


# --- the parent: runs each case in a fresh process, writes memory.json and MEMORY.md ------------------


def run_case(case: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--case", case] + [
        a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", str(v))
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]}
    return json.loads(lines[-1][7:])


def params(size: str) -> int:
    C, L, _ = SIZES[size]
    return 50257 * C + 1024 * C + L * (12 * C * C + 13 * C) + 2 * C


def has_lora_flag() -> bool:
    out = subprocess.run([sys.executable, "-m", "gpt2kit", "finetune", "--help"], capture_output=True, text=True).stdout
    return "--lora-rank" in out


def total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measure_size(size: str, args, notes: list[str]) -> dict:
    folder = model_folder(args.cache, size)
    row: dict = {"params": params(size)}
    for dtype in args.dtypes:
        if "load" in args.only:
            row[f"load/{dtype}"] = run_case("load", folder=folder, dtype=dtype)
        if "generate" in args.only:
            row[f"generate/{dtype}"] = run_case("generate", folder=folder, dtype=dtype, tokens=args.tokens)
    if "finetune" in args.only:
        # fp32 weights, gradients and AdamW's two moments: 16 bytes a parameter before activations.
        need = 16 * params(size)
        if "full" in args.kinds and need > 0.9 * total_memory_bytes():
            row["finetune/full"] = {
                "skipped": f"needs {need / GB:.1f} GB for weights, gradients and AdamW alone (computed)"
            }
        elif "full" in args.kinds:
            row["finetune/full"] = run_case(
                "finetune",
                folder=folder,
                dtype="full",
                dataset=token_file(args.cache),
                steps=args.steps,
                train_dtype=args.train_dtype,
            )
        if args.lora and "lora" in args.kinds:
            row["finetune/lora"] = run_case(
                "finetune",
                folder=folder,
                dtype="lora",
                dataset=token_file(args.cache),
                steps=args.steps,
                train_dtype=args.train_dtype,
            )
        elif not args.lora and size == args.sizes[0]:
            notes.append("LoRA not measured: this tree's `gpt2kit finetune` has no --lora-rank")
    return row


def fits(peak_mb: float | None) -> str:
    if peak_mb is None:
        return ""
    return ", ".join(f"{g}" for g in (8, 16, 24, 80) if peak_mb / 1e3 <= g * 0.95) or "none"


def markdown(results: dict) -> str:
    base = results["baseline"].get("peak_rss_MB", float("nan"))
    bw = results["bandwidth"].get("read_GBps", float("nan"))
    lines = [
        f"CPU: {results['cpu']}; read bandwidth {bw:.1f} GB/s; baseline (Python + torch + gpt2kit, kernels "
        f"and tokenizer loaded, no weights) {base:.0f} MB peak RSS, included in every figure below.",
        "",
        "| size | what | dtype/kind | model MB | peak RSS MB | (peak - baseline) / model | tokens/s | bound tokens/s | fits in GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, row in results["sizes"].items():
        for key, r in row.items():
            if key == "params":
                continue
            what, kind = key.split("/")
            if "error" in r or "skipped" in r:
                lines.append(f"| {size} | {what} | {kind} | | | | | | {r.get('skipped') or 'failed: ' + r['error']} |")
                continue
            model = r.get("model_MB")
            ratio = f"{(r['peak_rss_MB'] - base) / model:.2f}" if model else ""
            bound = (
                f"{r.get('read_GBps', bw) * 1e3 / r['bytes_per_token_MB']:.1f}" if r.get("bytes_per_token_MB") else ""
            )
            rate = f"{r['tokens_per_s']:.1f}" if "tokens_per_s" in r else ""
            label = kind + (f" ({r['path']})" if r.get("path") and kind.startswith("auto") else "")
            model_col = f"{model:.0f}" if model else ""
            lines.append(
                f"| {size} | {what} | {label} | {model_col} | {r['peak_rss_MB']:.0f} | {ratio} | {rate} | "
                f"{bound} | {fits(r['peak_rss_MB'])} |"
            )
    return "\n".join(lines + [""] + [f"- {n}" for n in results["notes"]]) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="124M only, 8 new tokens, 2 training steps: a smoke run")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument(
        "--only", nargs="+", default=["load", "generate", "finetune"], choices=["load", "generate", "finetune"]
    )
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["full", "lora"],
        choices=["full", "lora"],
        help="which fine-tunings to measure (full is skipped, as computed, where it cannot fit)",
    )
    p.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    p.add_argument("--steps", type=int, default=4, help="fine-tuning steps (the first is not timed)")
    p.add_argument("--train-dtype", default="auto")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2kit-benchmarks",
    )
    p.add_argument("--out", type=Path, default=HERE / "memory.json")
    p.add_argument("--table-only", action="store_true", help="write MEMORY.md from memory.json, measuring nothing")
    # a child's case
    for name in ("case", "folder", "dtype", "dataset"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse()
    if args.case:
        return child_main(args)
    if args.quick:
        args.sizes, args.tokens, args.steps = ["124M"], 8, 2
    if args.table_only:
        table = markdown(json.loads(args.out.read_text()))
        args.out.with_name("MEMORY.md").write_text("# Memory and speed per size (benchmarks/memory.py)\n\n" + table)
        return print(table)
    from gpt2kit.cpu import detect

    args.lora = "finetune" in args.only and has_lora_flag()
    notes: list[str] = []
    results = {
        "cpu": detect().describe(),
        "cores": os.cpu_count(),
        "memory_GB": total_memory_bytes() / GB,
        "baseline": run_case("baseline"),
        "bandwidth": run_case("bandwidth"),
        "sizes": {},
        "notes": notes,
    }
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for size in args.sizes:
        row = measure_size(size, args, notes)
        for r in row.values():  # the bound each speed is compared with: this run's bandwidth
            if isinstance(r, dict) and "bytes_per_token_MB" in r:
                r["read_GBps"] = results["bandwidth"].get("read_GBps")
        results["sizes"][size] = {**old.get("sizes", {}).get(size, {}), **row}
    for size, row in old.get("sizes", {}).items():  # sizes not measured this time keep their last figures
        results["sizes"].setdefault(size, row)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    args.out.with_name("MEMORY.md").write_text("# Memory and speed per size (benchmarks/memory.py)\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
