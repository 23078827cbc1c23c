"""The one type for a sample being generated (`Sequence`), the one for a request (`Request`), and what
they hand out: streamed `Piece`s and finished `Sample`s, with a `StepResult` per token when logprobs are asked.

A Sequence is everything about one row: its prompt ids and settings, its own generator (so its text
depends on its seed alone), the tokens drawn so far, the pipeline's per-row state, its place in the
engine (status, position, ready logits) and its text assembly (UTF-8 pieces, stop strings, finish reason).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .options import SamplingSettings


@dataclass
class StepResult:
    """One drawn token of sequence `row`, with its log-probabilities when they were asked for."""

    row: int  # the sequence's key
    token: int
    logprob: float | None = None  # log-probability of `token` under the model's raw distribution
    top: list[tuple[int, float]] | None = None  # the top-N alternatives (token, logprob)


@dataclass
class Piece:
    """A piece of streamed text of sample `index`, with the token steps it came from."""

    index: int
    text: str
    steps: list[StepResult] = field(default_factory=list)


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
    finish_reason: str = "length"  # "stop" (end of text or a stop string), "length" or "cancelled"
    steps: list[StepResult] = field(default_factory=list)
    # The end-of-text step that stopped it (recorded with logprobs): not text, but OpenAI's completions list
    # it, and lm-evaluation-harness drops the last logprob of an echo as the generated token's.
    end_step: StepResult | None = None


class Status(enum.Enum):
    WAITING = "waiting"  # added, not admitted
    PREFILLING = "prefilling"  # its prompt is going through the model
    RUNNING = "running"  # in the decoding batch
    FINISHED = "finished"


class TextStream:
    """Incremental UTF-8 text of one sample, stop strings held back until they can be ruled out."""

    def __init__(self, decoder, stops: list[str]):
        self.decoder = decoder
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
        hits = [self.pending.find(s) for s in self.stops if s in self.pending]
        if hits:
            cut = min(hits)
            out, self.pending, self.stopped = self.pending[:cut], "", True
        elif final:
            out, self.pending = self.pending, ""
        else:
            hold = max((self._partial(s) for s in self.stops), default=0)  # a tail that could grow into a stop
            out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        self.text += out
        return out

    def _partial(self, stop: str) -> int:
        """The longest n such that the pending text ends with the first n characters of `stop`."""
        for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:n]):
                return n
        return 0


@dataclass(eq=False)
class Sequence:
    """One sample from its prompt to its Sample. The engine fills the fields below `generator`."""

    key: int  # unique among the engine's sequences; the output index of its Piece/Sample
    prompt: str | None
    ids: list[int]  # the prompt's token ids
    seed: int
    settings: SamplingSettings
    max_new: int | None = None  # None: until end of text, or the context is full
    stops: list[str] = field(default_factory=list)
    include_prefix: bool = True
    stop_at_eot: bool = True
    logprobs: int = 0  # top alternatives recorded per step
    cancelled: bool = False  # set from another thread (a client that left); it stops at the next step
    generator: torch.Generator = field(init=False, repr=False)
    tokens: list[int] = field(init=False)  # the prompt and every token drawn so far
    state: dict[str, Any] = field(default_factory=dict, repr=False)  # the sampling pipeline's per-row state
    status: Status = Status.WAITING
    pos: int = 0  # positions in the KV cache: the next token fed goes at this position
    logits: torch.Tensor | None = field(default=None, repr=False)  # (V,) the next token's raw logits
    finish_reason: str = "length"
    sample: Sample | None = None  # set once finished
    first_token: float | None = None  # time.monotonic() of its first token

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        self.tokens = list(self.ids)
        self.generated: list[int] = []
        self.steps: list[StepResult] = []  # with logprobs: one per generated token
        self._pending_steps: list[StepResult] = []  # steps not yet attached to a Piece
        self._pieces: list[Piece] = []  # ready to hand out
        self._end_step: StepResult | None = None
        self._text: TextStream | None = None

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def open_text(self, decoder) -> None:
        """Start text assembly with the tokenizer's streaming decoder (the engine does this at admission)."""
        self._text = TextStream(decoder, self.stops)

    def take(self, res: StepResult, eot_id: int, ends: bool = False) -> bool:
        """The token just drawn; True when the sequence is done with it (end of text, a stop string, its length,
        or `ends`: the pipeline says it is complete, as a constraint whose document is whole)."""
        self.tokens.append(res.token)
        if res.token == eot_id and (self.stop_at_eot or ends):
            self._end_step = res if self.logprobs else None
            self.finish("stop")
            return True
        self.generated.append(res.token)
        if self.logprobs:
            self.steps.append(res)
            self._pending_steps.append(res)
        piece = self._text.push(res.token)
        if piece:
            self._pieces.append(Piece(self.key, piece, self._pending_steps))
            self._pending_steps = []
        if self._text.stopped or ends:
            self.finish("stop")
        elif self.max_new is not None and len(self.generated) >= self.max_new:
            self.finish("length")
        return self.finished

    def finish(self, reason: str | None = None) -> None:
        """End the sequence (once): the text held back is released and its Sample made."""
        if self.sample is not None:
            return
        self.finish_reason = reason or self.finish_reason
        self.status, self.logits = Status.FINISHED, None
        tail = self._text.close() if self._text is not None else ""
        if tail or self._pending_steps:
            self._pieces.append(Piece(self.key, tail, self._pending_steps))
            self._pending_steps = []
        prefix = self.prompt or ""
        completion = self._text.text if self._text is not None else ""
        self.sample = Sample(
            index=self.key,
            prompt=prefix,
            completion=completion,
            seed=self.seed,
            text=(prefix + completion) if self.include_prefix else completion,
            prompt_tokens=len(self.ids),
            tokens=self.generated,
            finish_reason=self.finish_reason,
            steps=self.steps,
            end_step=self._end_step,
        )

    def pop_pieces(self) -> list[Piece]:
        pieces, self._pieces = self._pieces, []
        return pieces

    def reservation(self, n_ctx: int) -> int:
        """The most KV-cache positions this row can hold: past n_ctx it slides (the engine's window), never grows."""
        return min(n_ctx, len(self.ids) + (n_ctx if self.max_new is None else self.max_new))


Event = Any  # Piece | Sample | Exception | DONE, in the order a request's reader sees them
DONE = object()  # a request's last event


@dataclass(eq=False)
class Request:
    """Sequences asked for together (a CLI run's batch, an HTTP request): admitted fairly against other
    requests, their events handed to `sink` in order. score > 0: also score each distinct prompt's own tokens
    with that many alternatives (echo with logprobs); the scores land in `prompt_scores` before DONE."""

    seqs: list[Sequence]
    sink: Callable[[Event], None] | None = None  # None: events collect in `outbox`
    score: int = 0
    prompt_scores: dict[tuple[int, ...], list] = field(default_factory=dict)
    outbox: list[Event] = field(default_factory=list)
    open: int = 0  # sequences not yet finished
    started: bool = False  # some of its sequences admitted
    failed: bool = False
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None

    def __post_init__(self) -> None:
        self.open = len(self.seqs)

    def put(self, event: Event) -> None:
        if self.sink is None:
            self.outbox.append(event)
        else:
            self.sink(event)

    def cancel(self) -> None:
        for s in self.seqs:
            s.cancelled = True

    @property
    def cancelled(self) -> bool:
        return any(s.cancelled for s in self.seqs)
