"""GET /metrics: the server's counters in Prometheus' text exposition format (version 0.0.4), so the
server drops into existing dashboards.

What the HTTP layer sees is measured here: requests by outcome, tokens, time to first token and the time
between streamed tokens, from the request's arrival to each event the engine hands back. The engine's own
counters are read with defaults, so this module needs nothing of the engine but a few plain numbers.
All updates happen on the server's event loop (one thread): no locks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

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

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for edge, c in zip(self.buckets, self.counts):
            running += c
            out.append(f'{name}_bucket{{le="{_number(edge)}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out += [f"{name}_sum {_number(self.total)}", f"{name}_count {self.count}"]
        return out


@dataclass
class Metrics:
    """Counters the HTTP layer keeps; `render` adds the engine's."""
    requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, outcome) -> count
    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    tpot: Histogram = field(default_factory=lambda: Histogram(TPOT_BUCKETS))

    def request(self, route: str, outcome: str) -> None:
        self.requests[route, outcome] = self.requests.get((route, outcome), 0) + 1

    def render(self, engine: Any) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[str]) -> None:
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples])

        metric("gpt2kit_requests_total", "counter", "HTTP requests to the generation routes, by route and outcome",
               [f'gpt2kit_requests_total{{route="{r}",outcome="{o}"}} {c}' for (r, o), c in sorted(self.requests.items())])
        metric("gpt2kit_prompt_tokens_total", "counter", "prompt tokens of accepted requests",
               [f"gpt2kit_prompt_tokens_total {self.prompt_tokens}"])
        metric("gpt2kit_generation_tokens_total", "counter", "tokens generated",
               [f"gpt2kit_generation_tokens_total {self.generated_tokens}"])
        engine_counters = (
            ("gpt2kit_queue_depth", "gauge", "requests waiting for the engine", "queue_depth"),
            ("gpt2kit_running_rows", "gauge", "rows (samples) the engine is decoding now", "running_rows"),
            ("gpt2kit_cancelled_rows_total", "counter", "rows stopped because their client left", "cancelled_rows"),
            ("gpt2kit_engine_requests_total", "counter", "requests the engine finished", "requests_done"),
            ("gpt2kit_batches_total", "counter", "batches the engine ran", "batches_run"),
            ("gpt2kit_kv_cache_positions", "gauge", "KV-cache positions the running batch holds", "kv_cache_positions"),
            ("gpt2kit_kv_cache_budget_positions", "gauge", "the most KV-cache positions it may hold",
             "kv_budget_positions"),
        )
        for name, kind, help_, attribute in engine_counters:
            metric(name, kind, help_, [f"{name} {int(getattr(engine, attribute, 0) or 0)}"])
        metric("gpt2kit_time_to_first_token_seconds", "histogram",
               "from a request's arrival to its first token", self.ttft.lines("gpt2kit_time_to_first_token_seconds"))
        metric("gpt2kit_time_per_output_token_seconds", "histogram",
               "between a choice's successive streamed pieces (a piece is a token, or a few where a character or "
               "a possible stop string spans them)", self.tpot.lines("gpt2kit_time_per_output_token_seconds"))
        return "\n".join(lines) + "\n"


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))
