"""GET /metrics: the server's counters in Prometheus' text exposition format (version 0.0.4), so the
server drops into existing dashboards.

What the HTTP layer sees is measured here: requests by outcome, tokens, time to first token and the time
between streamed tokens, from the request's arrival to each event the engine hands back. The engine's own
counters are read with defaults, so this module needs nothing of the engine but a few plain numbers.
Each served model's figures carry the label model="id"; requests by route and outcome are server-wide.
All updates happen on the server's event loop (one thread): no locks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds. TTFT on a CPU runs from milliseconds (a short prompt, an idle server) to many seconds (a
# long prompt behind a full queue); the time between tokens from ~1 ms (tiny models) to ~1 s.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
# Request outcomes: ok, bad_request (4xx but 429), rate_limited (429), error (5xx), cancelled (client left).
OUTCOMES = ("ok", "bad_request", "rate_limited", "error", "cancelled")


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
                return

    def lines(self, name: str, labels: str = "") -> list[str]:
        """`labels`: 'model="x",' put before each sample's own labels."""
        out, running = [], 0
        for edge, c in zip(self.buckets, self.counts):
            running += c
            out.append(f'{name}_bucket{{{labels}le="{_number(edge)}"}} {running}')
        out.append(f'{name}_bucket{{{labels}le="+Inf"}} {self.count}')
        plain = f"{{{labels.rstrip(',')}}}" if labels else ""
        out += [f"{name}_sum{plain} {_number(self.total)}", f"{name}_count{plain} {self.count}"]
        return out


@dataclass
class ModelMetrics:
    """What the HTTP layer counts for one served model (each model has its own)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    tpot: Histogram = field(default_factory=lambda: Histogram(TPOT_BUCKETS))


# The engine's counters, read by attribute name: (metric, kind, help, attribute).
ENGINE_COUNTERS = (
    ("gpt2kit_queue_depth", "gauge", "requests waiting for the engine", "queue_depth"),
    ("gpt2kit_running_rows", "gauge", "rows (samples) the engine is decoding now", "running_rows"),
    ("gpt2kit_cancelled_rows_total", "counter", "rows stopped because their client left", "cancelled_rows"),
    ("gpt2kit_engine_requests_total", "counter", "requests the engine finished", "requests_done"),
    ("gpt2kit_batches_total", "counter", "batches the engine ran", "batches_run"),
    ("gpt2kit_kv_cache_positions", "gauge", "KV-cache positions the running batch holds", "kv_cache_positions"),
    ("gpt2kit_kv_cache_budget_positions", "gauge", "the most KV-cache positions it may hold", "kv_budget_positions"),
)


@dataclass
class Metrics:
    """Requests by route and outcome, server-wide (refusals come before a model is known); `render` adds
    each model's own figures, labelled model="id"."""

    requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, outcome) -> count

    def request(self, route: str, outcome: str) -> None:
        self.requests[route, outcome] = self.requests.get((route, outcome), 0) + 1

    def render(self, models: Iterable[Any], resident_bytes: int | None = None) -> str:
        """models: objects with .id, .engine, .metrics (ModelMetrics) and .memory() (a dict of byte counts)."""
        lines: list[str] = []
        models = list(models)

        def metric(name: str, kind: str, help_: str, samples: list[str]) -> None:
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples])

        def each(value) -> list[str]:  # one sample per model
            return [f'{{model="{_label(m.id)}"}} {value(m)}' for m in models]

        metric(
            "gpt2kit_requests_total",
            "counter",
            "HTTP requests to the generation routes, by route and outcome",
            [f'gpt2kit_requests_total{{route="{r}",outcome="{o}"}} {c}' for (r, o), c in sorted(self.requests.items())],
        )
        metric(
            "gpt2kit_prompt_tokens_total",
            "counter",
            "prompt tokens of accepted requests",
            ["gpt2kit_prompt_tokens_total" + s for s in each(lambda m: m.metrics.prompt_tokens)],
        )
        metric(
            "gpt2kit_generation_tokens_total",
            "counter",
            "tokens generated",
            ["gpt2kit_generation_tokens_total" + s for s in each(lambda m: m.metrics.generated_tokens)],
        )
        for name, kind, help_, attribute in ENGINE_COUNTERS:
            metric(
                name, kind, help_, [name + s for s in each(lambda m, a=attribute: int(getattr(m.engine, a, 0) or 0))]
            )
        metric(
            "gpt2kit_time_to_first_token_seconds",
            "histogram",
            "from a request's arrival to its first token",
            [
                x
                for m in models
                for x in m.metrics.ttft.lines("gpt2kit_time_to_first_token_seconds", f'model="{_label(m.id)}",')
            ],
        )
        metric(
            "gpt2kit_time_per_output_token_seconds",
            "histogram",
            "between a choice's successive streamed pieces (a piece is a token, or a few where a character or "
            "a possible stop string spans them)",
            [
                x
                for m in models
                for x in m.metrics.tpot.lines("gpt2kit_time_per_output_token_seconds", f'model="{_label(m.id)}",')
            ],
        )
        _memory(metric, models, resident_bytes)
        return "\n".join(lines) + "\n"


def _memory(metric, models: list[Any], resident_bytes: int | None) -> None:
    samples = [
        f'gpt2kit_model_memory_bytes{{model="{_label(m.id)}",kind="{kind}"}} {n}'
        for m in models
        for kind, n in (("weights", m.memory()["weights_bytes"]), ("kv_budget", m.memory()["kv_budget_bytes"]))
        if n is not None
    ]
    metric(
        "gpt2kit_model_memory_bytes",
        "gauge",
        "bytes of a loaded model's tensors (weights) and of the KV cache its engine may reserve (kv_budget)",
        samples,
    )
    if resident_bytes is not None:
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "the server process's resident memory (VmRSS)",
            [f"process_resident_memory_bytes {resident_bytes}"],
        )


def _label(value: str) -> str:
    """A label value as Prometheus' text format escapes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))
