"""The one generation path for the CLI, the Python API, the server and training-time samples.

Token ids come from decoding.BatchDecoder; this layer turns them into text: prompts and seeds,
streaming that never splits a character or leaks part of a stop string, stop strings, and
gpt-2-simple's post-processing (truncate, include_prefix).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .decoding import BatchDecoder, StepResult
from .errors import UserError
from .model import GPT
from .sampling import SamplingSettings, make_generator
from .tokenizer import Tokenizer

log = logging.getLogger("gpt2kit")


@dataclass
class Sample:
    """One finished sample."""
    index: int  # position in the output order (prompt order, then sample number)
    prompt: str
    text: str  # what the user gets: prefix (if asked) + continuation, post-processed
    completion: str  # the continuation alone
    seed: int
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (end of text or a stop string) or "length"
    steps: list[StepResult] = field(default_factory=list)


@dataclass
class Piece:
    """A piece of streamed text of sample `index`, with the token steps it came from."""
    index: int
    text: str
    steps: list[StepResult] = field(default_factory=list)


@dataclass
class Job:
    """One sample to generate: the unit the decoder batches (the CLI's samples, the server's requests)."""
    index: int
    prompt: str | None
    ids: list[int]
    seed: int
    settings: SamplingSettings
    max_new: int | None = None
    stops: list[str] = field(default_factory=list)
    include_prefix: bool = True
    stop_at_eot: bool = True
    logprobs: int = 0
    cancelled: bool = False  # set from another thread (a client that left); the row stops at the next step


def sample_seed(seed: int, index: int) -> int:
    """Sample `index` of a run with `seed` gets its own generator, so batching never changes its text."""
    return (seed * 1_000_003 + index * 7919) % (2**63 - 1)


def new_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


class _TextStream:
    """Per-sample text assembly: incremental UTF-8, stop strings held back until they can be ruled out."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str]):
        self.decoder = tokenizer.stream_decoder()
        self.stops = [s for s in stops if s]
        self.text = ""  # the continuation released so far
        self.pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        self.pending += self.decoder.push(token)
        return self._release(final=False)

    def close(self) -> str:
        if not self.stopped:
            self.pending += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            cut = min(h for h, _ in hits)
            out, self.pending, self.stopped = self.pending[:cut], "", True
        elif final:
            out, self.pending = self.pending, ""
        else:
            # Hold back the longest tail that could still grow into a stop string.
            hold = 0
            for s in self.stops:
                for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                    if self.pending.endswith(s[:n]):
                        hold = max(hold, n)
                        break
            out = self.pending[:len(self.pending) - hold]
            self.pending = self.pending[len(self.pending) - hold:]
        self.text += out
        return out


def encode_prompt(tokenizer: Tokenizer, prompt: str | None, n_ctx: int) -> list[int]:
    """None or '' starts from <|endoftext|> (OpenAI's generate_unconditional_samples.py)."""
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    if len(ids) >= n_ctx:
        log.warning("the prompt is %d tokens, longer than the model's context of %d: keeping its last %d tokens",
                    len(ids), n_ctx, n_ctx - 1)
        ids = ids[-(n_ctx - 1):]
    return ids


def iter_samples(model: GPT, tokenizer: Tokenizer, prompts: list[str | None], *, length: int | None,
                 settings: SamplingSettings, stop: list[str], seed: int, nsamples: int, batch_size: int,
                 truncate: str | None, include_prefix: bool, stop_at_eot: bool = True,
                 logprobs: int = 0) -> Iterator[Piece | Sample]:
    """Yield streamed Pieces and finished Samples, in output order. nsamples=0 runs forever."""
    if length is not None and length < 0:
        raise UserError(f"length must be 0 or more new tokens, got {length}")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    if nsamples < 0:
        raise UserError(f"nsamples must be 0 (forever) or more, got {nsamples}")
    stops = list(stop) + ([truncate] if truncate else [])  # gpt-2-simple's truncate cuts like a stop string
    encoded = [encode_prompt(tokenizer, p, model.config.n_ctx) for p in prompts]

    def jobs() -> Iterator[Job]:
        k = 0
        while True:
            for pi, p in enumerate(prompts):
                for _ in range(nsamples if nsamples else 1):
                    yield Job(index=k, prompt=p, ids=encoded[pi], seed=sample_seed(seed, k), settings=settings,
                              max_new=length, stops=stops, include_prefix=include_prefix,
                              stop_at_eot=stop_at_eot, logprobs=logprobs)
                    k += 1
            if nsamples:
                return

    it = jobs()
    while True:
        batch = [j for _, j in zip(range(batch_size), it)]
        if not batch:
            return
        yield from run_jobs(model, tokenizer, batch)


def run_jobs(model: GPT, tokenizer: Tokenizer, jobs: list[Job], *, ordered: bool = True) -> Iterator[Piece | Sample]:
    """Decode `jobs` as one batch. ordered: release samples in job order, the current one streaming
    live (the CLI); otherwise every piece as soon as it exists (the server)."""
    max_new = None if any(j.max_new is None for j in jobs) else max(j.max_new for j in jobs)
    decoder = BatchDecoder(model, [j.ids for j in jobs], settings=[j.settings for j in jobs],
                           generators=[make_generator(j.seed) for j in jobs], max_new=max_new,
                           pad_id=tokenizer.eot_id, logprobs=max(j.logprobs for j in jobs),
                           sliding=max_new is not None)
    streams = [_TextStream(tokenizer, j.stops) for j in jobs]
    tokens: list[list[int]] = [[] for _ in jobs]
    steps: list[list[StepResult]] = [[] for _ in jobs]
    pending_steps: list[list[StepResult]] = [[] for _ in jobs]
    reasons = ["length"] * len(jobs)
    done: dict[int, Sample] = {}
    buffered: list[list[Piece]] = [[] for _ in jobs]
    next_out = 0

    finished: set[int] = set()

    def finish(row: int) -> None:
        if row in finished:
            return
        finished.add(row)
        job = jobs[row]
        tail = streams[row].close()
        if tail or pending_steps[row]:
            buffered[row].append(Piece(job.index, tail, pending_steps[row]))
            pending_steps[row] = []
        prefix = job.prompt or ""
        completion = streams[row].text
        done[row] = Sample(index=job.index, prompt=prefix, text=(prefix + completion) if job.include_prefix else completion,
                           completion=completion, seed=job.seed, prompt_tokens=len(job.ids), tokens=tokens[row],
                           finish_reason=reasons[row], steps=steps[row])

    def release() -> Iterator[Piece | Sample]:
        nonlocal next_out
        if not ordered:
            for row in range(len(jobs)):
                yield from buffered[row]
                buffered[row] = []
                if row in done:
                    yield done.pop(row)
            return
        while next_out < len(jobs):
            yield from buffered[next_out]
            buffered[next_out] = []
            if next_out not in done:
                return
            yield done.pop(next_out)
            next_out += 1

    for row, job in enumerate(jobs):
        if job.max_new == 0:
            decoder.finish(row)
            finish(row)
    while decoder.active:
        for row, job in enumerate(jobs):
            if job.cancelled and row not in finished:
                reasons[row] = "cancelled"
                decoder.finish(row)
                finish(row)
        if not decoder.active:
            break
        for res in decoder.step():
            row = res.row
            job = jobs[row]
            if job.stop_at_eot and res.token == tokenizer.eot_id:
                reasons[row] = "stop"
                decoder.finish(row)
                finish(row)
                continue
            tokens[row].append(res.token)
            if job.logprobs:
                steps[row].append(res)
                pending_steps[row].append(res)
            piece = streams[row].push(res.token)
            if piece:
                buffered[row].append(Piece(job.index, piece, pending_steps[row]))
                pending_steps[row] = []
            if streams[row].stopped:
                reasons[row] = "stop"
                decoder.finish(row)
                finish(row)
            elif job.max_new is not None and len(tokens[row]) >= job.max_new:
                decoder.finish(row)
                finish(row)
        yield from release()
    for row in range(len(jobs)):
        finish(row)
    yield from release()
