"""What `--dtype auto` means on a CPU: the fastest measured candidate that keeps fp32's answers.

Pure functions over measured figures (tuning.py measures them), so the choice for any CPU family
can be tested on any machine with injected figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The fidelity bar a reduced precision must meet against fp32 on held-out text (README, Speed).
MIN_TOP1_AGREEMENT = 0.995
MAX_LOSS_CHANGE = 0.001  # relative: within 0.1% of fp32's loss
# The shapes timed: one token for 1 row and for 8 (decoding), and a 128-token prompt (prefill).
TIMED_ROWS = {"batch1": 1, "batch8": 8, "prefill": 128}


@dataclass(frozen=True)
class Fidelity:
    top1: float  # fraction of positions whose top-1 token equals fp32's
    loss: float  # mean next-token loss on the held-out text
    reference_loss: float  # fp32's

    @property
    def meets_bar(self) -> bool:
        return self.top1 >= MIN_TOP1_AGREEMENT and abs(self.loss - self.reference_loss) <= MAX_LOSS_CHANGE * abs(
            self.reference_loss
        )


def score(seconds: dict[str, float], baseline: dict[str, float]) -> float:
    """Time relative to the baseline's, as the geometric mean over the timed shapes (lower is faster)."""
    return math.exp(sum(math.log(seconds[k] / baseline[k]) for k in TIMED_ROWS) / len(TIMED_ROWS))


def by_speed(timings: dict[str, dict[str, float]], baseline: str) -> list[str]:
    """Candidate names, fastest first."""
    return sorted(timings, key=lambda name: score(timings[name], timings[baseline]))


def choose(timings: dict[str, dict[str, float]], fidelity: dict[str, Fidelity], baseline: str) -> str:
    """The fastest candidate whose fidelity meets the bar; the fp32 baseline is exact by definition."""
    for name in by_speed(timings, baseline):
        if name == baseline or (name in fidelity and fidelity[name].meets_bar):
            return name
    return baseline
