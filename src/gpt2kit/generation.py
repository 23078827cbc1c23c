"""Text in, samples out, over the engine: prompts and seeds, the sequences a run asks for, and the CLI's
and the Python API's ordered output (the current sample streams, later ones wait their turn).

Sample k of a run draws from sample_seed(seed, k), so its text depends on the seed and its place alone;
the server builds its sequences with the same make_sequences, so a seed gives the CLI's text there too.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Iterator

from .engine import Engine
from .errors import UserError
from .model import GPT
from .options import SamplingSettings
from .sequence import DONE, Piece, Request, Sample, Sequence  # noqa: F401 (Piece, Sample: the outputs, re-exported)
from .tokenizer import Tokenizer

log = logging.getLogger("gpt2kit")


def sample_seed(seed: int, index: int) -> int:
    """Sample `index` of a run with `seed` gets its own generator, so batching never changes its text."""
    return (seed * 1_000_003 + index * 7919) % (2**63 - 1)


def new_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


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
        log.warning(
            "the prompt is %d tokens, longer than the model's context of %d: keeping its last %d tokens",
            len(ids),
            n_ctx,
            n_ctx - 1,
        )
        ids = ids[-(n_ctx - 1) :]
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


def make_sequences(
    prompts: list[str | None],
    encoded: list[list[int]],
    *,
    per_prompt: int,
    seed: int,
    settings: SamplingSettings,
    max_new: int | None,
    stops: list[str],
    include_prefix: bool,
    stop_at_eot: bool,
    logprobs: int,
    first: int = 0,
    index_base: int = 0,
) -> Iterator[Sequence]:
    """`per_prompt` sequences for each prompt, in prompt order: the CLI's samples and the server's choices.

    Sample k (counting from `first`) draws from sample_seed(seed, k); its key is index_base + k (the server
    offsets keys so concurrent requests never share one).
    """
    check_counts(length=max_new)
    k = first
    for prompt, ids in zip(prompts, encoded):
        for _ in range(per_prompt):
            yield Sequence(
                key=index_base + k,
                prompt=prompt,
                ids=ids,
                seed=sample_seed(seed, k),
                settings=settings,
                max_new=max_new,
                stops=stops,
                include_prefix=include_prefix,
                stop_at_eot=stop_at_eot,
                logprobs=logprobs,
            )
            k += 1


def iter_samples(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: list[str | None],
    *,
    length: int | None,
    settings: SamplingSettings,
    stop: list[str],
    seed: int,
    nsamples: int,
    batch_size: int,
    truncate: str | None,
    include_prefix: bool,
    stop_at_eot: bool,
    logprobs: int,
) -> Iterator[Piece | Sample]:
    """Yield streamed Pieces and finished Samples, in output order. nsamples=0 runs forever.

    Up to batch_size samples decode together; as one finishes the next joins (continuous batching), so a
    short sample never waits for a long one's batch to end."""
    check_counts(length=length, nsamples=nsamples, batch_size=batch_size)
    stops = list(stop) + ([truncate] if truncate else [])  # gpt-2-simple's truncate cuts like a stop string
    encoded = [encode_prompt(tokenizer, p, model.config.n_ctx) for p in prompts]

    def sequences() -> Iterator[Sequence]:
        # nsamples=0: round after round of one sample per prompt, numbered on from the last round.
        for round_ in itertools.count() if nsamples == 0 else range(1):
            yield from make_sequences(
                prompts,
                encoded,
                per_prompt=nsamples or 1,
                seed=seed,
                settings=settings,
                max_new=length,
                stops=stops,
                include_prefix=include_prefix,
                stop_at_eot=stop_at_eot,
                logprobs=logprobs,
                first=round_ * len(prompts),
            )

    yield from OrderedRun(Engine(model, tokenizer, max_rows=batch_size), sequences(), batch_size).events()


class OrderedRun:
    """Sequences fed to an engine `rows` at a time, their events handed out in key order: the current
    sample's pieces as they come, a later sample's once every earlier one has finished."""

    def __init__(self, engine: Engine, seqs: Iterator[Sequence], rows: int):
        self.engine, self.seqs, self.rows = engine, seqs, rows
        self.requests: list[Request] = []
        self.waiting: dict[int, list[Piece | Sample]] = {}  # key -> its events not yet handed out
        self.order: list[int] = []  # keys in output order, from the one handed out now
        self.exhausted = False

    def events(self) -> Iterator[Piece | Sample]:
        self._refill()
        while self.order:
            self.engine.step()
            self._collect()
            yield from self._release()
            self._refill()

    def _refill(self) -> None:
        """Keep `rows` sequences open: one request of the next ones whenever some have finished."""
        open_rows = sum(r.open for r in self.requests)
        batch = [] if self.exhausted else list(itertools.islice(self.seqs, self.rows - open_rows))
        if open_rows < self.rows and len(batch) < self.rows - open_rows:
            self.exhausted = True
        if batch:
            request = Request(batch)
            self.requests.append(request)
            self.order += [s.key for s in batch]
            for s in batch:
                self.waiting[s.key] = []
            self.engine.add(request)

    def _collect(self) -> None:
        for request in self.requests:
            for ev in request.outbox:
                if isinstance(ev, Exception):
                    raise ev
                if ev is not DONE:
                    self.waiting[ev.index].append(ev)
            request.outbox.clear()
        self.requests = [r for r in self.requests if r.open]

    def _release(self) -> Iterator[Piece | Sample]:
        while self.order:
            key = self.order[0]
            events, self.waiting[key] = self.waiting[key], []
            yield from events
            if not events or not isinstance(events[-1], Sample):
                return
            del self.waiting[key]
            self.order.pop(0)
