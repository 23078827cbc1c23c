"""gpt2kit on CPUs: the whole policy in one place.

- features: what the CPU has (CpuInfo), read at call time and injectable for tests.
- kernels: gpt2kit's C kernels built for that CPU (AVX2, or AVX-512 from the same source).
- weights: the weight formats the kernels read, and PyTorch's own fast paths.
- step, runner: a one-token step in C; CpuGPT, what `lm.model` is after a CPU load.
- candidates, tuning, policy: which path `--dtype auto` takes, by measurement.

`prepare` is the one entry point: it takes a loaded fp32 GPT and returns what decoding calls.
"""

from __future__ import annotations

import logging

from ..model import GPT
from ..options import LoadOptions
from .candidates import build, candidates, for_dtype
from .features import CpuInfo, detect
from .kernels import load as load_kernels
from .kernels import status as kernels_status
from .runner import CpuGPT
from .tuning import Decision, decide, probe_ids

log = logging.getLogger("gpt2kit")


def prepare(
    gpt: GPT, dtype: str = LoadOptions.dtype, *, cpu: CpuInfo | None = None, probe: list[int] | None = None
) -> CpuGPT:
    """`gpt` (fp32, on the CPU; consumed: its matrices are replaced) on this CPU's path for `dtype`.

    auto: the fastest candidate measured here whose answers on `probe` (held-out token ids) meet
    fp32's bar (tuning.py); any other dtype: that weight format, on the kernels where they build.
    """
    cpu = cpu or detect()
    kernels = load_kernels(cpu)
    decision: Decision | None = None
    if dtype == "auto":
        decision = decide(gpt, cpu, kernels, probe or [])
        choice = next(c for c in candidates(cpu, kernels) if c.name == decision.chosen)
        log.debug("--dtype auto on this CPU: %s", decision.summary())
    else:
        choice = for_dtype(dtype, kernels)
    model = build(gpt, choice, kernels)
    model.decision = decision
    return model


def auto_decision(gpt: GPT, probe: list[int], cpu: CpuInfo | None = None) -> Decision:
    """What `--dtype auto` takes on this CPU for `gpt` (fp32, left as it is), with the figures."""
    cpu = cpu or detect()
    return decide(gpt, cpu, load_kernels(cpu), probe)


def status(cpu: CpuInfo | None = None) -> str:
    """One line for people: this CPU and whether gpt2kit's kernels are in use on it (and if not, why)."""
    cpu = cpu or detect()
    return f"{cpu.describe()}; gpt2kit's CPU kernels {kernels_status(cpu)}"


__all__ = ["CpuGPT", "CpuInfo", "Decision", "auto_decision", "detect", "prepare", "probe_ids", "status"]
