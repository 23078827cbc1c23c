"""The engine's counters and latency samples, plain numbers for /health and /metrics.

Written by the engine's worker thread only; read from the HTTP thread (ints and lists read whole,
which CPython makes safe enough for monitoring).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

# Prometheus-style upper bounds in seconds: 5 ms (a tiny model's token) to a minute (a long queue).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KEEP_SAMPLES = 10_000  # the most recent samples kept for quantiles


@dataclass
class Histogram:
    """Cumulative-bucket counts as Prometheus' text format wants them, plus recent raw samples."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))  # the last is +Inf
    sum: float = 0.0
    count: int = 0
    samples: deque = field(default_factory=lambda: deque(maxlen=KEEP_SAMPLES))

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1
        self.samples.append(value)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) for each bucket, then (inf, count)."""
        out, total = [], 0
        for bound, n in zip(list(self.buckets) + [float("inf")], self.counts):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the recent samples (None before any)."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Stats:
    requests_done: int = 0  # requests answered in full (finished, cancelled or failed)
    requests_failed: int = 0  # of those, ended by an error or by shutdown
    cancelled_rows: int = 0  # rows stopped because their client left (running or still waiting)
    batches_run: int = 0  # busy periods: runs of steps from idle to idle (requests in one shared them)
    steps_run: int = 0  # decoding steps (one forward pass of the running batch each)
    prefill_chunks: int = 0  # prompt chunks run through the model
    prompt_tokens: int = 0  # prompt tokens prefilled (n samples of one prompt count once)
    tokens_generated: int = 0  # tokens drawn, every row
    batch_size: int = 0  # rows in the latest step
    kv_cache_positions: int = 0  # KV-cache positions (rows x columns) the running batch holds now
    kv_budget_positions: int = 0  # the most it may hold (--max-batch-tokens, or --max-batch x context)
    time_to_first_token: Histogram = field(default_factory=Histogram)  # seconds, submit -> a request's first token
    token_latency: Histogram = field(default_factory=Histogram)  # seconds per token after the first, per row
