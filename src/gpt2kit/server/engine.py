"""The server's worker: one thread owns the model and runs the one engine (gpt2kit.engine) step by step.

Requests come in from the HTTP side through `submit` (refused at once when the server drains, when a row
could never fit the KV budget, or when the queue is full), wait in an inbox until the worker adds them to
the engine between steps, and get their events on their own asyncio queues (Completion.request), so a slow
reader never holds up the others. SIGTERM drains: new requests are refused, running ones get
--shutdown-timeout seconds, then the rest end with an error.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

import torch

from ..batching import STEP_TOKENS
from ..engine import Engine as Core
from ..errors import UserError
from ..lm import LM
from ..scheduler import TooLarge, make_groups
from ..sequence import Request
from ..stats import Stats

log = logging.getLogger("gpt2kit")
IDLE_POLL = 0.1  # seconds the idle worker waits for work before it looks at the shutdown deadline again


class Refused(Exception):
    """A request the engine will not take: `status` is the HTTP answer."""

    status = 400
    type_ = "invalid_request_error"


class QueueFull(Refused):
    status, type_ = 429, "rate_limit_error"


class RequestTooLarge(Refused):
    status = 400


class ShuttingDown(Refused):
    status, type_ = 503, "server_error"


class Engine:
    """The worker thread around one model's engine, and what the HTTP side reads of it."""

    def __init__(
        self,
        loader: Callable[[], LM],
        *,
        max_batch: int,
        max_queue: int,
        max_batch_tokens: int | None = None,
        on_load_error: Callable[[BaseException], None] | None = None,
        step_tokens: int = STEP_TOKENS,
    ):
        """step_tokens: prompt tokens plus decoding rows per step while rows decode (batching.STEP_TOKENS)."""
        self.lm: LM | None = None
        self.core: Core | None = None
        self.step_tokens = step_tokens
        self.on_load_error = on_load_error
        self.load_exception: BaseException | None = None  # why the model did not load
        self.max_batch, self.max_queue, self.max_batch_tokens = max_batch, max_queue, max_batch_tokens
        self.stats = Stats()
        self._inbox: queue.Queue[Request] = queue.Queue()
        self._lock = threading.Lock()
        self._next_index = 0
        self._deadline: float | None = None  # set by drain(): when what still runs is cancelled
        self._thread = threading.Thread(target=self._run, args=(loader,), daemon=True, name="gpt2kit-engine")
        self._thread.start()

    # --- what the HTTP side reads ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.core is not None

    @property
    def load_error(self) -> str | None:
        """Why the model did not load, in a line for /health and 503 answers."""
        return None if self.load_exception is None else str(self.load_exception)

    requests_done = property(lambda self: self.stats.requests_done)
    cancelled_rows = property(lambda self: self.stats.cancelled_rows)
    batches_run = property(lambda self: self.stats.batches_run)
    batch_size = property(lambda self: self.stats.batch_size, doc="rows in the latest decoding step")
    kv_cache_positions = property(
        lambda self: self.stats.kv_cache_positions,
        doc="KV-cache positions the running batch holds now (at most kv_budget_positions)",
    )
    kv_budget_positions = property(lambda self: self.stats.kv_budget_positions, doc="--max-batch-tokens, resolved")
    draining = property(lambda self: self._deadline is not None)

    @property
    def queue_depth(self) -> int:
        """Requests accepted and not started (a request some of whose rows run is running)."""
        waiting = self.core.scheduler.requests() if self.core is not None else []
        return self._inbox.qsize() + sum(not r.started for r in waiting)

    @property
    def running_rows(self) -> int:
        """Rows admitted and not finished (prefill or decoding)."""
        return len(self.core.live) if self.core is not None else 0

    @property
    def idle(self) -> bool:
        return self._inbox.empty() and (self.core is None or self.core.idle)

    def budget(self) -> int:
        """The KV-cache positions all running rows may reserve (--max-batch-tokens, else max_batch x n_ctx)."""
        return self.max_batch_tokens or self.max_batch * self.lm.config.n_ctx

    def reserve(self, count: int) -> int:
        """The first of `count` consecutive sequence keys no other request has: results are routed by key."""
        with self._lock:
            first, self._next_index = self._next_index, self._next_index + count
        return first

    def submit(self, request: Request) -> None:
        """Queue `request`, or refuse it before any work: shutting down (503), a row that could never fit
        the budget (400), the queue full (429)."""
        if self.draining:
            raise ShuttingDown("the server is shutting down and takes no new requests")
        try:
            make_groups(request, n_ctx=self.lm.config.n_ctx, max_rows=self.max_batch, budget=self.budget())
        except TooLarge as e:
            raise RequestTooLarge(str(e)) from None
        with self._lock:  # submit runs on the event loop's one thread; the lock is for other callers
            if self.queue_depth >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting); try again shortly")
            self._inbox.put(request)

    def drain(self, timeout: float) -> None:
        """Graceful shutdown: refuse new requests (503), let running and queued ones finish for `timeout`
        seconds, then end the rest with an error (a stream gets an error event, then [DONE])."""
        if self._deadline is None:
            self._deadline = time.monotonic() + timeout

    def call(self, fn):
        """Run fn(lm) on the worker's model now (small read-only work, e.g. next-token probabilities)."""
        with torch.inference_mode():
            return fn(self.lm)

    # --- the worker -------------------------------------------------------------------------------

    def _run(self, loader: Callable[[], LM]) -> None:
        try:
            lm = loader()
        except Exception as e:  # reported by /health and every request (503), and to whoever started us
            self.load_exception = e
            if self.on_load_error is not None:
                self.on_load_error(e)
            else:  # a user's mistake in one line; anything else with its traceback
                log.error("could not load the model: %s", e, exc_info=not isinstance(e, UserError))
            return
        self.lm = lm
        self.core = Core(
            lm.model,
            lm.tokenizer,
            max_rows=self.max_batch,
            budget=self.budget(),
            step_tokens=self.step_tokens,
            stats=self.stats,
        )
        while True:
            self._take_new(block=self.core.idle)
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._take_new(block=False)
                self.core.fail_all(RuntimeError("the server shut down before this request finished"))
                continue
            try:
                self.core.step()
            except Exception as e:  # a bug must not kill the worker: fail what runs, keep serving
                log.exception("generation failed")
                self.core.fail_all(e)

    def _take_new(self, block: bool) -> None:
        """Move submitted requests into the engine (waiting for one if nothing runs)."""
        try:
            while True:
                request = self._inbox.get(timeout=IDLE_POLL) if block else self._inbox.get_nowait()
                block = False
                try:
                    self.core.add(request)
                except Exception as e:  # what submit could not see (the HTTP side checks constraints first)
                    log.error("a request was refused by the engine: %s", e, exc_info=not isinstance(e, UserError))
                    self.core.fail(request, e)
        except queue.Empty:
            pass
