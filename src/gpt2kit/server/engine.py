"""The model worker: one thread owns the model and decodes queued requests in shared batches.

Requests that arrive while a batch runs wait in a bounded queue and go together into the next
batch, so concurrent clients share forward passes. Results go to each request's own asyncio
queue without waiting on the client, so a slow reader never holds up the others; a request
whose client left is marked cancelled and its rows stop at the next step.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..generation import Job, Sample, run_jobs
from ..lm import LM

log = logging.getLogger("gpt2kit")
DONE = object()


class QueueFull(Exception):
    pass


@dataclass
class Request:
    jobs: list[Job]
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    prompt_logprobs: list[list[int]] | None = None  # prompts whose token logprobs to compute (echo + logprobs)
    prompt_results: list = field(default_factory=list)

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.sink.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self.cancel()

    def cancel(self) -> None:
        for j in self.jobs:
            j.cancelled = True


class Engine:
    def __init__(self, loader: Callable[[], LM], *, max_batch: int, max_queue: int,
                 on_load_error: Callable[[BaseException], None] | None = None):
        self.lm: LM | None = None
        self.on_load_error = on_load_error
        self.load_exception: BaseException | None = None  # why the model did not load
        self.max_batch, self.max_queue = max_batch, max_queue
        self._queue: queue.Queue[Request] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._next_index = 0
        self.batches_run = 0  # forward-pass batches: fewer than requests when requests shared them
        self.requests_done = 0
        self.cancelled_rows = 0
        self._thread = threading.Thread(target=self._run, args=(loader,), daemon=True, name="gpt2kit-engine")
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self.lm is not None

    @property
    def load_error(self) -> str | None:
        """Why the model did not load, in a line for /health and 503 answers."""
        return None if self.load_exception is None else str(self.load_exception)

    def reserve(self, count: int) -> int:
        """The first of `count` consecutive job indices no other request has: results are routed by index."""
        with self._lock:
            first, self._next_index = self._next_index, self._next_index + count
        return first

    def submit(self, request: Request) -> None:
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting); try again shortly")
            self._waiting += 1
        self._queue.put(request)

    def _take_batch(self) -> list[Request]:
        batch = [self._queue.get()]
        rows = len(batch[0].jobs)
        while rows < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(nxt)
            rows += len(nxt.jobs)
        with self._lock:
            self._waiting -= len(batch)
        return batch

    def _run(self, loader: Callable[[], LM]) -> None:
        try:
            self.lm = loader()
        except Exception as e:  # reported by /health and every request (503), and to whoever started us
            self.load_exception = e
            if self.on_load_error is not None:
                self.on_load_error(e)
            else:
                log.error("could not load the model: %s", e)
            return
        while True:
            batch = self._take_batch()
            try:
                self._decode(batch)
            except Exception as e:  # a bug must not kill the worker: fail these requests, keep serving
                log.exception("generation failed")
                for r in batch:
                    r.put(e)
            for r in batch:
                r.put(DONE)
            self.requests_done += len(batch)

    @torch.inference_mode()
    def _decode(self, batch: list[Request]) -> None:
        lm = self.lm
        for r in batch:
            if r.prompt_logprobs:
                r.prompt_results = [self._prompt_logprobs(ids, max(j.logprobs for j in r.jobs)) for ids in r.prompt_logprobs]
        owner = {j.index: r for r in batch for j in r.jobs}
        jobs = [j for r in batch for j in r.jobs if not j.cancelled]
        self.batches_run += 1
        for i in range(0, len(jobs), self.max_batch):
            for ev in run_jobs(lm.model, lm.tokenizer, jobs[i:i + self.max_batch], ordered=False):
                if isinstance(ev, Sample) and ev.finish_reason == "cancelled":
                    self.cancelled_rows += 1
                owner[ev.index].put(ev)

    def _prompt_logprobs(self, ids: list[int], top: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
        """For each prompt token: its log-probability given the tokens before it, and the top alternatives."""
        lm = self.lm
        x = torch.tensor([ids], device=lm.device)
        lp = lm.model(x)[0].float().log_softmax(-1)  # (T, V)
        out: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
        for t in range(1, len(ids)):
            values, indices = torch.topk(lp[t - 1], top)
            out.append((lp[t - 1, ids[t]].item(), list(zip(indices.tolist(), values.tolist()))))
        return out

    def call(self, fn):
        """Run fn(lm) on the worker's model now (small read-only work, e.g. next-token probabilities)."""
        with torch.inference_mode():
            return fn(self.lm)
