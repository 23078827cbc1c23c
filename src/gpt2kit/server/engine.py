"""The model worker: one thread owns the model and schedules requests step by step (continuous batching).

Every iteration the worker takes in new requests, admits waiting rows that fit the batch (scheduler.py:
round-robin across requests, within --max-batch rows and --max-batch-tokens of KV cache), prefills
waiting prompts first (vLLM's order: a new prompt's first token is what its client waits for) within a
token budget per step (batching.STEP_TOKENS, less the decoding rows; at least PREFILL_CHUNK), then runs
one decoding step of every running row (batching.py). A prompt that arrives when nothing decodes is
prefilled whole in one pass. A request that arrives while others run joins them at the next step; a
finished or cancelled row leaves at once. Prompts take turns across requests (_enqueue): a request's k-th
waiting prompt runs after every other request's k-th.
Prompt scoring (echo with logprobs) is part of the prompt's prefill (batching.Prefill's `score`): chunked,
within the step's token budget, interleaved like any prefill; with max_tokens 0 the prefill has no rows
and its jobs end when it does. (Scoring every prompt of a request in one full forward each when it was
admitted stalled every running row for all of them: 64 prompts of 1023 tokens, 64 forwards in one step.)
Results go to each request's own asyncio queue without waiting on the client, so a slow reader never
holds up the others.

Measured on the issue's case (bundled model, 2 cores): a 16-token request sent 0.3 s into a 250-token
one took 8x its time alone when batches ran start to end; now it is decoded alongside the long one.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..batching import PREFILL_CHUNK, STEP_TOKENS, Prefill, Row, RunningBatch
from ..generation import Job, RowOutput
from ..errors import UserError
from ..lm import LM
from ..sampling import make_generator
from .scheduler import Group, KvBudget, Scheduler, TooLarge, make_groups
from .stats import Stats

log = logging.getLogger("gpt2kit")
DONE = object()
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


@dataclass
class Request:
    jobs: list[Job]
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    prompt_logprobs: list[list[int]] | None = None  # prompts whose token logprobs to compute (echo + logprobs)
    prompt_results: list = field(default_factory=list)  # per prompt, batching.Prefill.scores: filled before DONE
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    open_rows: int = 0  # rows not yet finished
    groups: list[Group] = field(default_factory=list)
    started: bool = False  # some group admitted
    scoring: set[tuple[int, ...]] = field(default_factory=set)  # prompts whose scoring prefill has been made

    def __post_init__(self) -> None:
        self.prompt_results = [None] * len(self.prompt_logprobs or [])

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.sink.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self.cancel()

    def cancel(self) -> None:
        for j in self.jobs:
            j.cancelled = True

    @property
    def cancelled(self) -> bool:
        return any(j.cancelled for j in self.jobs)


@dataclass
class _Live:
    """A row admitted and not finished: in a prefill or in the running batch (row None: a max_tokens 0 job
    waiting for its prompt's scoring)."""
    request: Request
    output: RowOutput
    row: Row | None
    cost: int
    first_token: float | None = None


@dataclass
class _Prompt:
    """A prefill waiting or under way: for the rows that will continue it, and/or scoring its prompt."""
    prefill: Prefill
    request: Request
    ends: list[int] = field(default_factory=list)  # jobs (max_tokens 0) that end when the prompt is scored


class Engine:
    def __init__(self, loader: Callable[[], LM], *, max_batch: int, max_queue: int,
                 max_batch_tokens: int | None = None, on_load_error: Callable[[BaseException], None] | None = None,
                 step_tokens: int = STEP_TOKENS):
        """step_tokens: prompt tokens plus decoding rows per step while rows decode (batching.STEP_TOKENS)."""
        self.lm: LM | None = None
        self.step_tokens = step_tokens
        self.on_load_error = on_load_error
        self.load_exception: BaseException | None = None  # why the model did not load
        self.max_batch, self.max_queue, self.max_batch_tokens = max_batch, max_queue, max_batch_tokens
        self.stats = Stats()
        self._inbox: queue.Queue[Request] = queue.Queue()
        self._lock = threading.Lock()
        self._next_index = 0
        self._scheduler = Scheduler()
        self._prefills: deque[_Prompt] = deque()
        self._live: dict[int, _Live] = {}  # job index -> its row
        self._batch: RunningBatch | None = None
        self._deadline: float | None = None  # set by drain(): when what still runs is cancelled
        self._thread = threading.Thread(target=self._run, args=(loader,), daemon=True, name="gpt2kit-engine")
        self._thread.start()

    # --- what the HTTP side reads ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.lm is not None

    @property
    def load_error(self) -> str | None:
        """Why the model did not load, in a line for /health and 503 answers."""
        return None if self.load_exception is None else str(self.load_exception)

    requests_done = property(lambda self: self.stats.requests_done)
    cancelled_rows = property(lambda self: self.stats.cancelled_rows)
    batches_run = property(lambda self: self.stats.batches_run)
    queue_depth = property(lambda self: self._inbox.qsize() + sum(not r.started for r in self._scheduler.requests()),
                           doc="requests accepted and not started (a request some of whose rows run is running)")
    running_rows = property(lambda self: len(self._live), doc="rows admitted and not finished (prefill or decoding)")
    batch_size = property(lambda self: self.stats.batch_size, doc="rows in the latest decoding step")
    kv_cache_positions = property(lambda self: self.stats.kv_cache_positions,
                                  doc="KV-cache positions the running batch holds now (at most kv_budget_positions)")
    kv_budget_positions = property(lambda self: self.stats.kv_budget_positions, doc="--max-batch-tokens, resolved")
    draining = property(lambda self: self._deadline is not None)

    @property
    def idle(self) -> bool:
        return not self._live and not len(self._scheduler) and self._inbox.empty()

    def budget(self) -> int:
        """The KV-cache positions all running rows may reserve (--max-batch-tokens, else max_batch x n_ctx)."""
        return self.max_batch_tokens or self.max_batch * self.lm.config.n_ctx

    def reserve(self, count: int) -> int:
        """The first of `count` consecutive job indices no other request has: results are routed by index."""
        with self._lock:
            first, self._next_index = self._next_index, self._next_index + count
        return first

    def submit(self, request: Request) -> None:
        """Queue `request`, or refuse it before any work: shutting down (503), a row that could never fit
        the budget (400), the queue full (429)."""
        if self.draining:
            raise ShuttingDown("the server is shutting down and takes no new requests")
        try:
            request.groups = make_groups(request, request.jobs, n_ctx=self.lm.config.n_ctx, max_rows=self.max_batch,
                                         budget=self.budget())
        except TooLarge as e:
            raise RequestTooLarge(str(e)) from None
        request.open_rows = len(request.jobs)
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
            self.lm = loader()
        except Exception as e:  # reported by /health and every request (503), and to whoever started us
            self.load_exception = e
            if self.on_load_error is not None:
                self.on_load_error(e)
            else:  # a user's mistake in one line; anything else with its traceback
                log.error("could not load the model: %s", e, exc_info=not isinstance(e, UserError))
            return
        self._batch = RunningBatch(self.lm.model, self.lm.tokenizer.eot_id, budget=self.budget())
        self.stats.kv_budget_positions = self.budget()
        while True:
            self._take_new(block=not self._live and not len(self._scheduler))
            try:
                with torch.inference_mode():
                    self._iterate()
            except Exception as e:  # a bug must not kill the worker: fail what runs, keep serving
                log.exception("generation failed")
                self._fail_all(e)

    def _take_new(self, block: bool) -> None:
        """Move submitted requests into the scheduler (waiting for one if nothing runs)."""
        try:
            while True:
                request = self._inbox.get(timeout=IDLE_POLL) if block else self._inbox.get_nowait()
                block = False
                self._scheduler.add(request, request.groups)
        except queue.Empty:
            pass

    def _iterate(self) -> None:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._fail_all(RuntimeError("the server shut down before this request finished"), waiting=True)
            return
        self._sweep_cancelled()
        was_idle = not self._live
        self._admit()
        if was_idle and self._live:
            self.stats.batches_run += 1
        self._prefill()
        self._step()
        batch = self._batch
        dead = sum(r is None for r in batch.slots)
        if not batch.rows:
            batch.slots, batch.cache = [], None  # nothing runs: the cache's memory goes back
        elif dead * 2 >= len(batch.slots) and not self._prefills and not len(self._scheduler):
            batch.compact()
        self.stats.kv_cache_positions = batch.positions

    def _admit(self) -> None:
        running = [live.cost for live in self._live.values()]
        room = KvBudget(positions=self.budget(), max_rows=self.max_batch, running=running)
        for group in self._scheduler.admit(room.take):
            group.request.started = True
            self._start(group)

    def _start(self, group: Group) -> None:
        """Rows of `group` go live: a prefill of their prompt, shared by them all, scoring it if it is the
        first of its request's groups of that prompt to ask (echo with logprobs). A max_tokens 0 job ends
        at once, or when the prompt is scored."""
        request, ids = group.request, list(group.jobs[0].ids)
        score = 0
        if request.prompt_logprobs and tuple(ids) not in request.scoring:
            request.scoring.add(tuple(ids))
            score = max(j.logprobs for j in request.jobs)
        prompt = _Prompt(Prefill(self.lm.model, ids, [], score=score), request)
        for job in group.jobs:
            output = RowOutput(job, self.lm.tokenizer)
            if job.max_new == 0 and not score:
                output.finish("length")
                self._finished(request, output)
                continue
            row = None
            if job.max_new == 0:
                prompt.ends.append(job.index)
            else:
                row = Row(key=job.index, settings=job.settings, generator=make_generator(job.seed),
                          tokens=list(job.ids), logprobs=job.logprobs)
                prompt.prefill.rows.append(row)
            self._live[job.index] = _Live(request, output, row, group.row_cost)
        if prompt.prefill.rows or prompt.ends:
            self._enqueue(prompt)
            self.stats.prompt_tokens += len(ids)

    def _enqueue(self, prompt: _Prompt) -> None:
        """Prefills take turns across requests: a request's k-th waiting prompt goes after every other request's
        k-th, so a one-prompt request admitted after a 64-prompt one waits for one of its prompts, not all 64.
        The head (maybe half done) keeps its place."""
        mine = sum(p.request is prompt.request for p in self._prefills)
        turns: dict[int, int] = {}  # request -> its prompts seen so far
        for i, p in enumerate(self._prefills):
            turn = turns[id(p.request)] = turns.get(id(p.request), -1) + 1
            if turn > mine:
                self._prefills.insert(i, prompt)
                return
        self._prefills.append(prompt)

    def _prefill(self) -> None:
        """Waiting prompts first, in turns (_enqueue), within the step's token budget; when no row decodes, the
        oldest prompt alone and whole, so its first token comes after one pass over it (a lone request). A
        prompt that is only scored (max_tokens 0) has no first token to hurry: it keeps to the step's budget,
        so a request arriving meanwhile waits for a chunk of it, not for a whole 1023-token prompt."""
        decoding = len(self._batch.rows)
        budget = max(PREFILL_CHUNK, self.step_tokens - decoding)
        if not decoding and self._prefills and self._prefills[0].prefill.rows:
            budget = max(1, self._prefills[0].prefill.remaining)
        ready = []
        while self._prefills and budget > 0:
            p = self._prefills[0].prefill
            budget -= p.advance(budget)
            self.stats.prefill_chunks += 1
            if p.done:
                self._scored(self._prefills.popleft())
                if p.rows:
                    ready.append(p)
        if ready:
            self._batch.join(ready)

    def _scored(self, prompt: _Prompt) -> None:
        """A finished prefill's scores go to every prompt of its request with its ids; its max_tokens 0 jobs end."""
        request, p = prompt.request, prompt.prefill
        if p.score:
            for i, ids in enumerate(request.prompt_logprobs):
                if ids == p.ids:
                    request.prompt_results[i] = p.scores
        now = time.monotonic()
        for key in prompt.ends:
            self._live[key].output.finish("length")
            self._end_row(key, now)

    def _step(self) -> None:
        """Draw a token for every running row, hand out what it makes, and feed the rows that go on."""
        batch = self._batch
        results = batch.draw()
        for key, error in batch.failed:  # its own numbers broke down: that request fails, the batch goes on
            if key in self._live:
                self._fail_request(self._live[key].request, error)
        results = [res for res in results if res.row in self._live]  # not the failed requests' other rows
        if not results:
            return
        now = time.monotonic()
        self.stats.steps_run += 1
        self.stats.batch_size = len(results)
        self.stats.tokens_generated += len(results)
        for res in results:
            live = self._live[res.row]
            if live.first_token is None:
                live.first_token = now
            if live.request.first_token is None:
                live.request.first_token = now
                self.stats.time_to_first_token.observe(now - live.request.submitted)
            done = live.output.take(res)
            for piece in live.output.pop_pieces():
                live.request.put(piece)
            if done:
                batch.leave(res.row)
                self._end_row(res.row, now)
        for row in batch.feed():  # rows whose context is full: re-prefill their last n_ctx/2 tokens first
            window = Prefill(self.lm.model, row.tokens[-(self.lm.config.n_ctx // 2):], [row])
            self._prefills.appendleft(_Prompt(window, self._live[row.key].request))

    def _end_row(self, key: int, now: float) -> None:
        live = self._live.pop(key)
        tokens = len(live.output.tokens)
        if live.first_token is not None and tokens > 1:
            self.stats.token_latency.observe((now - live.first_token) / (tokens - 1))
        self._finished(live.request, live.output)

    def _finished(self, request: Request, output: RowOutput) -> None:
        """A row's last pieces and its Sample; the request's end once it has no open rows."""
        for piece in output.pop_pieces():
            request.put(piece)
        request.put(output.sample)
        request.open_rows -= 1
        if request.open_rows == 0:
            request.put(DONE)
            self.stats.requests_done += 1

    def _sweep_cancelled(self) -> None:
        """Rows whose client left stop now; waiting rows of such requests never start."""
        now = time.monotonic()
        for key, live in list(self._live.items()):
            if live.output.job.cancelled:
                self._drop_live(key)
                live.output.finish("cancelled")
                self.stats.cancelled_rows += 1
                self._end_row(key, now)
        for group in self._scheduler.remove(lambda r: not r.cancelled):
            for job in group.jobs:
                output = RowOutput(job, self.lm.tokenizer)
                output.finish("cancelled")
                self.stats.cancelled_rows += 1
                self._finished(group.request, output)

    def _drop_live(self, key: int) -> None:
        """Take row `key` out of the batch or out of its prefill (a prefill nobody waits for is dropped)."""
        self._batch.leave(key)
        for p in list(self._prefills):
            p.prefill.rows = [r for r in p.prefill.rows if r.key != key]
            p.ends = [k for k in p.ends if k != key]
            if not p.prefill.rows and not p.ends:
                self._prefills.remove(p)

    def _fail_request(self, request: Request, error: Exception) -> None:
        """End one request with `error`: its rows leave the batch and its prefills, its waiting rows never start."""
        log.error("a request failed, the others go on: %s", error)
        for key in [k for k, live in self._live.items() if live.request is request]:
            self._drop_live(key)
            del self._live[key]
        self._scheduler.remove(lambda r: r is not request)
        request.put(error)
        request.put(DONE)
        self.stats.requests_done += 1
        self.stats.requests_failed += 1

    def _fail_all(self, error: Exception, *, waiting: bool = False) -> None:
        """End the admitted requests with `error` (a bug), or every accepted one (the shutdown deadline)."""
        failed = {id(live.request): live.request for live in self._live.values()}
        if waiting:
            self._take_new(block=False)
            failed.update((id(r), r) for r in self._scheduler.requests())
        self._scheduler.remove(lambda r: id(r) not in failed)
        self._live.clear()
        self._prefills.clear()
        self._batch.slots, self._batch.cache = [], None
        for request in failed.values():
            request.put(error)
            request.put(DONE)
            self.stats.requests_done += 1
            self.stats.requests_failed += 1
