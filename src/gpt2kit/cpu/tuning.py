"""Measuring, once per machine and model, which candidate `--dtype auto` takes on a CPU.

- Speed, per machine (CPU model, cores, flags, gpt2kit version, kernels' instruction set) and model
  shape: one block's four matrices of the model's shape, random weights, timed on each candidate for
  1 and 8 rows (decoding) and 128 rows (a prompt's prefill). Well under a second for 124M's shape.
- Fidelity, per model (a fingerprint of its weights): the candidates faster than fp32, fastest first,
  run on held-out text (assets/heldout.txt) until one meets policy's bar against fp32's logits.

Both are kept in GPT2KIT_HOME/tuning/<machine>.json (written atomically), so later loads decide at once. The
timing keeps the machine's load beside it: timings taken while other work crowded the cores are taken again at
the next load on a quieter machine, so one busy moment does not decide `auto` for good.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from importlib import metadata

import torch
import torch.nn.functional as F

from .. import durable
from ..formats.mapped import release
from ..model import GPT
from ..paths import HELDOUT_TEXT, tuning_dir
from .candidates import Candidate, candidates, linear_maker, on_candidate
from .features import CpuInfo
from .kernels import Kernels
from .policy import TIMED_ROWS, Fidelity, by_speed, choose
from .runner import block_matrices

log = logging.getLogger("gpt2kit")
FORMAT_VERSION = 2  # of the tuning file (2: the load each timing was taken under)
BUSY_LOAD = 1.0  # runnable processes per core (1-minute load average) above which a timing is provisional
PROBE_TOKENS = 512  # held-out tokens the fidelity runs on: 1 disagreement in 512 is 99.8%
HEAD_ROWS = 64  # positions whose logits exist at once in the check: 64 x 50257 fp32 is 13 MB


def probe_ids(encode) -> list[int]:
    """The held-out token ids fidelity is checked on, as `encode` (a tokenizer's) reads assets/heldout.txt."""
    return encode(HELDOUT_TEXT.read_text())[:PROBE_TOKENS]


@dataclass
class Decision:
    chosen: str  # a Candidate.name
    timings: dict[str, dict[str, float]]  # name -> {batch1, batch8, prefill: seconds}
    fidelity: dict[str, Fidelity]  # name -> its fidelity, for those measured

    def summary(self) -> str:
        base = next(n for n in self.timings if n.startswith("float32/"))
        parts = []
        for name in by_speed(self.timings, base):
            t, b = self.timings[name], self.timings[base]
            speed = " ".join(f"{k} {b[k] / t[k]:.2f}x" for k in TIMED_ROWS)
            f = self.fidelity.get(name)
            fid = "" if f is None else f", top-1 {f.top1:.1%}, loss {f.loss:.4f} vs {f.reference_loss:.4f}"
            parts.append(f"{name}{' (chosen)' if name == self.chosen else ''}: {speed} fp32's speed{fid}")
        return "; ".join(parts)


def machine_key(cpu: CpuInfo, kernels: Kernels | None) -> str:
    try:
        version = metadata.version("gpt2kit")
    except metadata.PackageNotFoundError:
        version = "unknown"
    raw = json.dumps(
        [
            cpu.model,
            cpu.cores,
            sorted(cpu.flags),
            version,
            kernels.path.name if kernels else None,  # the build, named by its sources' hash: new kernels, new timings
            torch.__version__,
            torch.get_num_threads(),
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _read(path) -> dict:
    try:
        data = json.loads(path.read_text())
        if data.get("version") == FORMAT_VERSION:
            return data
    except (OSError, ValueError):
        pass  # missing or damaged: measure again
    return {"version": FORMAT_VERSION, "timings": {}, "timed_at_load": {}, "fidelity": {}}


def load_per_core(cpu: CpuInfo) -> float:
    """The 1-minute load average per core: above BUSY_LOAD, other work competes with any timing taken now."""
    try:
        return os.getloadavg()[0] / max(1, cpu.cores)
    except OSError:  # not available here (Windows): count the machine as quiet
        return 0.0


def _write(path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_text(path, json.dumps(data, indent=1))
    except OSError as e:  # a read-only home only costs measuring again next time
        log.debug("could not keep the CPU tuning in %s: %s", path, e)


def _seconds(fn, min_seconds: float = 0.005) -> float:
    """Seconds per call of `fn`, repeated for at least `min_seconds`."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / n


@torch.inference_mode()
def time_candidates(
    found: dict[str, Candidate], kernels: Kernels | None, n_embd: int, rounds: int = 5
) -> dict[str, dict[str, float]]:
    """Seconds for one block's four matrices (of width n_embd) on each candidate, per timed shape.

    Rounds interleave the candidates and keep each one's fastest, so a burst of load from another
    process slows one round of every candidate rather than all rounds of one.
    """
    C, g = n_embd, torch.Generator().manual_seed(0)
    weights = [
        (torch.randn(n, k, generator=g) * 0.02, torch.zeros(n)) for n, k in ((3 * C, C), (C, C), (4 * C, C), (C, 4 * C))
    ]
    mats = {name: [linear_maker(c, kernels)(w, b) for w, b in weights] for name, c in found.items()}
    xs = {
        shape: (torch.randn(rows, C, generator=g), torch.randn(rows, 4 * C, generator=g))
        for shape, rows in TIMED_ROWS.items()
    }

    def run(ms, x, x4):
        return [m(x4 if i == 3 else x) for i, m in enumerate(ms)]

    best = {name: {shape: float("inf") for shape in TIMED_ROWS} for name in found}
    for r in range(rounds + 1):  # round 0 warms up (first-touch pages, thread pool)
        for name, ms in mats.items():
            for shape, (x, x4) in xs.items():
                t = _seconds(lambda: run(ms, x, x4))
                if r:
                    best[name][shape] = min(best[name][shape], t)
    return best


def fingerprint(gpt: GPT, probe: list[int]) -> str:
    """Which model this is, by a sample of every weight (a fine-tuned copy differs, even one whose adapter
    touched a single matrix of one block: LoRA's update B A is dense) and the probe. The first and last
    256 values of each tensor in memory order: a page or two of each file mapping is read, not the model,
    so a first auto load's peak stays that of a plain load (a strided sample, or flattening a transposed
    view of a file, faulted in nearly every page)."""
    h = hashlib.sha256(json.dumps([asdict(gpt.config), probe]).encode())
    for _, t in sorted(gpt.named_parameters()):
        t = t.detach()
        flat = t.permute(*sorted(range(t.dim()), key=lambda d: -t.stride(d))).flatten()  # a view where it can be
        for part in (flat[:256], flat[-256:]):
            h.update(part.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _windows(probe: list[int], n_ctx: int) -> list[torch.Tensor]:
    n = min(n_ctx, len(probe))
    return [
        torch.tensor(probe[i : i + n]).unsqueeze(0) for i in range(0, len(probe) - 1, n) if len(probe[i : i + n]) > 1
    ]


def _release_matrices(block) -> None:
    """Give back the pages of a block's fp32 matrices (views of the model file) once the check is past them."""
    for parent, name in block_matrices(block):
        lin = getattr(parent, name)
        release(lin.weight)
        release(lin.bias)


@torch.inference_mode()
def compare(gpt: GPT, c: Candidate, kernels: Kernels | None, windows: list[torch.Tensor]) -> Fidelity:
    """Candidate `c` against fp32 on the held-out `windows` (each (1, T)), the two side by side.

    One block at a time: each block runs every window on fp32, then on c's matrices (converted for
    that block alone), then its fp32 pages go back to the kernel; the output head runs HEAD_ROWS
    positions at a time. So the check holds about one block, the head and its conversion, never the
    whole fp32 model beside a converted one: a model's first `--dtype auto` load peaks like a plain load.
    """
    xs_ref = [gpt.wte(w) + gpt.wpe(torch.arange(w.shape[1]).unsqueeze(0)) for w in windows]  # each (1, T, C)
    xs = list(xs_ref)
    for block in gpt.h:
        xs_ref = [block(x) for x in xs_ref]
        with on_candidate(block, c, kernels) as b:
            xs = [b(x) for x in xs]
        _release_matrices(block)
    head = linear_maker(c, kernels)(gpt.wte.weight, None)
    agree, losses, ref_losses = [], [], []
    for w, x_ref, x in zip(windows, xs_ref, xs):
        h_ref, h, targets = gpt.ln_f(x_ref)[0], gpt.ln_f(x)[0], w[0, 1:]  # (T, C), (T, C), (T - 1,)
        for s in range(0, h.shape[0], HEAD_ROWS):
            ref = F.linear(h_ref[s : s + HEAD_ROWS], gpt.wte.weight)  # (n, V)
            got = head(h[s : s + HEAD_ROWS]).float()  # (n, V)
            agree.append(ref.argmax(-1) == got.argmax(-1))
            t = targets[s : s + HEAD_ROWS]  # the last position of a window has no next token
            losses.append(F.cross_entropy(got[: len(t)], t, reduction="none"))
            ref_losses.append(F.cross_entropy(ref[: len(t)], t, reduction="none"))
    release(gpt.wte.weight)
    return Fidelity(
        torch.cat(agree).float().mean().item(), torch.cat(losses).mean().item(), torch.cat(ref_losses).mean().item()
    )


def decide(gpt: GPT, cpu: CpuInfo, kernels: Kernels | None, probe: list[int]) -> Decision:
    """Time the candidates (once per machine and shape), then check the faster ones' fidelity on
    `probe` (once per model) until one meets the bar. `gpt` is fp32, unmodified, and comes back so."""
    path = tuning_dir() / f"{machine_key(cpu, kernels)}.json"
    data = _read(path)
    found = {c.name: c for c in candidates(cpu, kernels)}
    baseline = next(n for n in found if n.startswith("float32/"))
    shape, load = str(gpt.config.n_embd), load_per_core(cpu)
    busy_before = data.setdefault("timed_at_load", {}).get(shape, 0.0) > BUSY_LOAD >= load
    if set(data["timings"].get(shape, {})) != set(found) or busy_before:
        log.info(
            "timing this CPU's paths for --dtype auto (%s)",
            "again: the last timing ran on a busy machine" if busy_before else "once per machine and model width",
        )
        data["timings"][shape] = time_candidates(found, kernels, gpt.config.n_embd)
        data["timed_at_load"][shape] = load
        _write(path, data)
    timings = data["timings"][shape]
    key = fingerprint(gpt, probe)
    fid = {n: Fidelity(**f) for n, f in data["fidelity"].get(key, {}).items()}
    windows = _windows(probe, gpt.config.n_ctx)
    for name in by_speed(timings, baseline):
        if name == baseline or (name in fid and fid[name].meets_bar):
            break
        if name not in fid and windows:
            log.info("checking %s against fp32 on held-out text (once per model)", name)
            fid[name] = compare(gpt, found[name], kernels, windows)
            data["fidelity"].setdefault(key, {})[name] = asdict(fid[name])
            _write(path, data)
            if fid[name].meets_bar:
                break
    return Decision(choose(timings, fid, baseline), timings, fid)
