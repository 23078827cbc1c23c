"""The one generation path for the CLI, the Python API, the server and training-time samples.

Token ids come from decoding.BatchDecoder; this layer turns them into text: prompts and seeds,
streaming that never splits a character or leaks part of a stop string, stop strings, and
gpt-2-simple's post-processing (truncate, include_prefix).
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Iterator


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
    # The end-of-text step that stopped it (recorded with logprobs): not text, but OpenAI's completions list
    # it, and lm-evaluation-harness drops the last logprob of an echo as the generated token's.
    end_step: StepResult | None = None


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


class PromptTooLong(UserError):
    """A prompt that leaves no room in the context (the server answers 400 context_length_exceeded)."""

    def __init__(self, tokens: int, n_ctx: int):
        super().__init__(f"the prompt is {tokens} tokens; this model's context is {n_ctx}")
        self.tokens, self.n_ctx = tokens, n_ctx


def encode_prompt(tokenizer: Tokenizer, prompt: str | None, n_ctx: int, *, truncate: bool = True) -> list[int]:
    """None or '' starts from <|endoftext|> (OpenAI's generate_unconditional_samples.py).

    A prompt of n_ctx tokens or more keeps its last n_ctx - 1 (one position must stay free for the
    first new token), or with truncate=False raises PromptTooLong.
    """
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    if len(ids) >= n_ctx:
        if not truncate:
            raise PromptTooLong(len(ids), n_ctx)
        log.warning("the prompt is %d tokens, longer than the model's context of %d: keeping its last %d tokens",
                    len(ids), n_ctx, n_ctx - 1)
        ids = ids[-(n_ctx - 1):]
    return ids


def check_counts(*, length: int | None = None, nsamples: int | None = None, batch_size: int | None = None) -> None:
    """The one rule for generation's counts (None: not given, nothing to check). iter_samples and make_jobs check them when they start; the
    CLI calls this before the model loads, so a bad flag is the only thing the user sees."""
    if length is not None and length < 0:
        raise UserError(f"length must be 0 or more new tokens, got {length}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    if nsamples is not None and nsamples < 0:
        raise UserError(f"nsamples must be 0 (forever) or more, got {nsamples}")


def make_jobs(prompts: list[str | None], encoded: list[list[int]], *, per_prompt: int, seed: int,
              settings: SamplingSettings, max_new: int | None, stops: list[str], include_prefix: bool,
              stop_at_eot: bool, logprobs: int, first: int = 0, index_base: int = 0) -> Iterator[Job]:
    """`per_prompt` jobs for each prompt, in prompt order: the CLI's samples and the server's choices.

    Sample k (counting from `first`) draws from sample_seed(seed, k), so its text depends on the seed
    and its place alone, never on what shares its batch; its job index is index_base + k (the server
    offsets indices so concurrent requests never share one).
    """
    check_counts(length=max_new)
    k = first
    for prompt, ids in zip(prompts, encoded):
        for _ in range(per_prompt):
            yield Job(index=index_base + k, prompt=prompt, ids=ids, seed=sample_seed(seed, k), settings=settings,
                      max_new=max_new, stops=stops, include_prefix=include_prefix, stop_at_eot=stop_at_eot,
                      logprobs=logprobs)
            k += 1


def iter_samples(model: GPT, tokenizer: Tokenizer, prompts: list[str | None], *, length: int | None,
                 settings: SamplingSettings, stop: list[str], seed: int, nsamples: int, batch_size: int,
                 truncate: str | None, include_prefix: bool, stop_at_eot: bool,
                 logprobs: int) -> Iterator[Piece | Sample]:
    """Yield streamed Pieces and finished Samples, in output order. nsamples=0 runs forever."""
    check_counts(length=length, nsamples=nsamples, batch_size=batch_size)
    stops = list(stop) + ([truncate] if truncate else [])  # gpt-2-simple's truncate cuts like a stop string
    encoded = [encode_prompt(tokenizer, p, model.config.n_ctx) for p in prompts]

    def jobs() -> Iterator[Job]:
        # nsamples=0: round after round of one sample per prompt, numbered on from the last round.
        for round_ in itertools.count() if nsamples == 0 else range(1):
            yield from make_jobs(prompts, encoded, per_prompt=nsamples or 1, seed=seed, settings=settings,
                                 max_new=length, stops=stops, include_prefix=include_prefix,
                                 stop_at_eot=stop_at_eot, logprobs=logprobs, first=round_ * len(prompts))

    it = jobs()
    while True:
        batch = [j for _, j in zip(range(batch_size), it)]
        if not batch:
            return
        yield from run_jobs(model, tokenizer, batch)


def run_jobs(model: GPT, tokenizer: Tokenizer, jobs: list[Job], *, ordered: bool = True) -> Iterator[Piece | Sample]:
    """Decode `jobs` as one batch. ordered: release samples in job order, the current one streaming
    live (the CLI); otherwise every piece as soon as it exists (the server)."""
    yield from _BatchRun(model, tokenizer, jobs, ordered).events()


class RowOutput:
    """One job's output as its tokens arrive: streamed pieces (never a split character or a partial stop
    string), its stop strings, its finish reason, and at the end its Sample. Decoders of any kind feed it."""

    def __init__(self, job: Job, tokenizer: Tokenizer):
        self.job, self.eot_id = job, tokenizer.eot_id
        self.stream = _TextStream(tokenizer, job.stops)
        self.tokens: list[int] = []
        self.steps: list[StepResult] = []
        self.pending_steps: list[StepResult] = []  # steps not yet attached to a Piece
        self.pieces: list[Piece] = []  # ready to hand out
        self.reason = "length"
        self.end_step: StepResult | None = None  # the end of text that stopped it, when logprobs are recorded
        self.sample: Sample | None = None  # set once the row is finished

    def take(self, res: StepResult) -> bool:
        """One new token; True when the row is done with it (end of text, a stop string, its length)."""
        job = self.job
        if job.stop_at_eot and res.token == self.eot_id:
            self.end_step = res if job.logprobs else None
            self.finish("stop")
            return True
        self.tokens.append(res.token)
        if job.logprobs:
            self.steps.append(res)
            self.pending_steps.append(res)
        piece = self.stream.push(res.token)
        if piece:
            self.pieces.append(Piece(job.index, piece, self.pending_steps))
            self.pending_steps = []
        if self.stream.stopped:
            self.finish("stop")
        elif job.max_new is not None and len(self.tokens) >= job.max_new:
            self.finish("length")
        return self.sample is not None

    def finish(self, reason: str | None = None) -> None:
        """End the row (once): the text held back is released and its Sample made."""
        if self.sample is not None:
            return
        self.reason = reason or self.reason
        job = self.job
        tail = self.stream.close()
        if tail or self.pending_steps:
            self.pieces.append(Piece(job.index, tail, self.pending_steps))
            self.pending_steps = []
        prefix = job.prompt or ""
        completion = self.stream.text
        self.sample = Sample(index=job.index, prompt=prefix, text=(prefix + completion) if job.include_prefix else completion,
                             completion=completion, seed=job.seed, prompt_tokens=len(job.ids), tokens=self.tokens,
                             finish_reason=self.reason, steps=self.steps, end_step=self.end_step)

    def pop_pieces(self) -> list[Piece]:
        pieces, self.pieces = self.pieces, []
        return pieces


class _BatchRun:
    """One batch of jobs being decoded: each row's output, and what is ready to hand out (pieces and
    samples wait here until their turn when the output is ordered)."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, jobs: list[Job], ordered: bool):
        max_new = None if any(j.max_new is None for j in jobs) else max(j.max_new for j in jobs)
        self.decoder = BatchDecoder(model, [j.ids for j in jobs], settings=[j.settings for j in jobs],
                                    generators=[make_generator(j.seed) for j in jobs], max_new=max_new,
                                    pad_id=tokenizer.eot_id, logprobs=max(j.logprobs for j in jobs),
                                    sliding=max_new is not None)
        self.jobs, self.ordered = jobs, ordered
        self.outputs = [RowOutput(j, tokenizer) for j in jobs]
        self.handed: set[int] = set()  # rows whose Sample has been handed out
        self.next_out = 0  # ordered output: the row now streaming

    def events(self) -> Iterator[Piece | Sample]:
        for row, job in enumerate(self.jobs):
            if job.max_new == 0:
                self.stop(row, "length")
        while self.decoder.active:
            for row, job in enumerate(self.jobs):
                if job.cancelled and self.outputs[row].sample is None:
                    self.stop(row, "cancelled")
            if not self.decoder.active:
                break
            for res in self.decoder.step():
                if self.outputs[res.row].take(res):
                    self.decoder.finish(res.row)
            yield from self.release()
        for out in self.outputs:
            out.finish()
        yield from self.release()

    def stop(self, row: int, reason: str) -> None:
        self.outputs[row].finish(reason)
        self.decoder.finish(row)

    def release(self) -> Iterator[Piece | Sample]:
        if not self.ordered:
            for row, out in enumerate(self.outputs):
                yield from out.pop_pieces()
                if out.sample is not None and row not in self.handed:
                    self.handed.add(row)
                    yield out.sample
            return
        while self.next_out < len(self.jobs):
            out = self.outputs[self.next_out]
            yield from out.pop_pieces()
            if out.sample is None:
                return
            yield out.sample
            self.next_out += 1
