"""One generation request: checked against the server's limits, turned into sequences by generation's own
builder (so a seed gives the CLI's text), its events timed for /metrics, and its results put in
/v1/completions' layout (chat.py puts the same results in the chat layout)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

from ..errors import UserError
from ..generation import PromptTooLong, encode_prompt, make_sequences, new_seed
from ..lm import LM
from ..options import ServeOptions
from ..sequence import DONE, Piece, Request, Sample, Sequence
from .errors import APIError
from .metrics import ModelMetrics
from .protocol import CompletionRequest, SamplingFields
from .settings import sampling_settings

MAX_STOPS = 4  # OpenAI's limit on stop sequences


def check_model(model: str | None, model_name: str) -> None:
    """A request names the served model, or none."""
    if model is not None and model != model_name:
        raise APIError(
            404,
            f"The model `{model}` does not exist; this server serves `{model_name}`",
            param="model",
            code="model_not_found",
        )


def check_common(body: SamplingFields, model_name: str) -> None:
    """What completions and chat completions check alike before anything is encoded."""
    check_model(body.model, model_name)
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")


def _check(body: CompletionRequest, options: ServeOptions) -> None:
    """What a /v1/completions request asks that this server does not do, or allow."""
    if body.best_of is not None and body.best_of < body.n:
        raise APIError(
            400,
            f"best_of ({body.best_of}) must be at least n ({body.n}): best_of candidates are "
            "generated and the n best returned",
            param="best_of",
        )
    if body.stream and (body.best_of or body.n) > body.n:
        raise APIError(
            400, "best_of cannot be used with stream: the best are known only when all have finished", param="best_of"
        )
    if body.suffix:
        raise APIError(400, "suffix (insertion) is not available for GPT-2", param="suffix")
    if body.max_tokens is not None and body.max_tokens > options.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {body.max_tokens}; this server allows at most {options.max_tokens_limit}",
            param="max_tokens",
        )
    prompts = len(body.prompt) if isinstance(body.prompt, list) and body.prompt and not _is_ids(body.prompt) else 1
    rows = prompts * (body.best_of or body.n)
    if rows > options.max_request_rows:
        raise APIError(
            400,
            f"this request asks for {rows} completions (best_of or n, x prompts); this server allows "
            f"at most {options.max_request_rows} per request: split it",
            param="n",
        )


def logit_bias(body: SamplingFields, n_vocab: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} as sorted (id, bias) pairs, every id of this vocabulary, every bias in range."""
    out: dict[int, float] = {}
    for key, bias in (body.logit_bias or {}).items():
        token = int(key) if key.isascii() and key.isdigit() else -1
        if not 0 <= token < n_vocab:
            raise APIError(
                400, f"logit_bias: {key!r} is not a token id of this model (0..{n_vocab - 1})", param="logit_bias"
            )
        if not -100 <= bias <= 100:
            raise APIError(
                400, f"logit_bias: the bias of token {token} is {bias}; biases are in [-100, 100]", param="logit_bias"
            )
        if token in out:
            raise APIError(400, f"logit_bias: token {token} is given twice", param="logit_bias")
        out[token] = bias
    return tuple(sorted(out.items()))


@dataclass
class Completion:
    """A request's prompts, their token ids and its sequences: `per_prompt` candidates per prompt (best_of, else
    n), candidate c is sequence first_index + c. Its events come on `queue`, from the engine's thread."""

    body: CompletionRequest
    lm: LM
    model_name: str
    prompts: list[str | None]
    encoded: list[list[int]]
    seqs: list[Sequence]
    first_index: int
    metrics: ModelMetrics  # the served model's own
    arrival: float  # time.perf_counter() when the request arrived
    id: str = field(default_factory=lambda: "cmpl-" + secrets.token_hex(12))
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    @property
    def per_prompt(self) -> int:
        return self.body.best_of or self.body.n

    @classmethod
    def build(
        cls,
        body: CompletionRequest,
        lm: LM,
        *,
        model_name: str,
        options: ServeOptions,
        reserve: Any,
        metrics: ModelMetrics,
        arrival: float,
        extra_stops: Iterable[str] = (),
    ) -> Completion:
        """Check `body`, encode its prompts and make its sequences; `reserve(count)` gives the first key."""
        check_common(body, model_name)
        _check(body, options)
        prompts = body.prompt if isinstance(body.prompt, list) and not _is_ids(body.prompt) else [body.prompt]
        if not prompts:
            raise APIError(400, "prompt is an empty list", param="prompt")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > MAX_STOPS:
            raise APIError(400, f"at most {MAX_STOPS} stop sequences", param="stop")
        n_ctx, per_prompt = lm.config.n_ctx, body.best_of or body.n
        try:
            encoded = [
                _token_prompt(p, lm) if _is_ids(p) else encode_prompt(lm.tokenizer, p, n_ctx, truncate=False)
                for p in prompts
            ]
            prompts = [lm.tokenizer.decode(p) if _is_ids(p) else p for p in prompts]  # the text echo shows
            settings = sampling_settings(body, lm.tokenizer, logit_bias(body, lm.config.n_vocab))
            first = reserve(len(prompts) * per_prompt)
            seqs = list(
                make_sequences(
                    prompts,
                    encoded,
                    per_prompt=per_prompt,
                    seed=new_seed() if body.seed is None else body.seed,
                    settings=settings,
                    max_new=_max_new(body, options),
                    stops=stops + list(extra_stops),
                    include_prefix=False,
                    stop_at_eot=not body.ignore_eos,
                    logprobs=_decoder_logprobs(body),
                    index_base=first,
                )
            )
        except PromptTooLong as e:  # 400, as OpenAI's and vLLM's answer it (413 is for a body over the byte limit)
            raise APIError(
                400,
                f"{e}: a prompt may have at most {n_ctx - 1} tokens (one position stays free for the first new token)",
                param="prompt",
                code="context_length_exceeded",
            ) from None
        except UserError as e:
            raise APIError(400, str(e)) from None
        return cls(body, lm, model_name, prompts, encoded, seqs, first, metrics, arrival)

    def request(self) -> Request:
        """The engine's request for these sequences, its events put on `queue` from the engine's thread. Echo
        with logprobs also scores the prompts' own tokens."""
        loop = asyncio.get_running_loop()
        score = _decoder_logprobs(self.body) if (self.body.echo and self.body.logprobs is not None) else 0

        def sink(event) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, event)
            except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
                req.cancel()

        req = Request(self.seqs, sink=sink, score=score)
        return req

    def prompt_results(self, req: Request) -> list:
        """Per prompt, its tokens' (logprob, top alternatives) when the engine scored it (echo with logprobs)."""
        return [req.prompt_scores.get(tuple(ids)) for ids in self.encoded] if req.score else []

    def candidate_of(self, ev: Piece | Sample) -> int:
        return ev.index - self.first_index

    async def events(self, req: Request) -> AsyncIterator[Piece | Sample | Exception]:
        """The engine's events for this request, timed for /metrics; the request's rows stop when this ends
        (done, or the client left)."""
        self.metrics.prompt_tokens += sum(len(ids) for ids in self.encoded)
        last: dict[int, float] = {}  # candidate -> when its last piece came
        try:
            while (ev := await self.queue.get()) is not DONE:
                now = time.perf_counter()
                if isinstance(ev, Piece) or (isinstance(ev, Sample) and ev.tokens):
                    if not last:
                        self.metrics.ttft.observe(now - self.arrival)
                    c = self.candidate_of(ev)
                    if isinstance(ev, Piece) and c in last:
                        self.metrics.tpot.observe(now - last[c])
                    last[c] = now
                if isinstance(ev, Sample):
                    self.metrics.generated_tokens += len(ev.tokens)
                yield ev
        finally:
            req.cancel()

    async def collect(self, req: Request) -> tuple[dict[int, Sample], dict[int, int]]:
        """Wait for every candidate; returns the chosen samples by choice index and all candidates' token count."""
        samples: dict[int, Sample] = {}
        async for ev in self.events(req):
            if isinstance(ev, Exception):
                raise APIError(500, f"generation failed: {ev}", type_="server_error")
            if isinstance(ev, Sample):
                samples[self.candidate_of(ev)] = ev
        return self.choose(samples), samples

    def choose(self, candidates: dict[int, Sample]) -> dict[int, Sample]:
        """Choice pi * n + rank for the rank-th best candidate of prompt pi: with best_of > n, best by mean
        token log-probability (OpenAI's "highest log probability per token"); else every one in order."""
        n, per = self.body.n, self.per_prompt
        out: dict[int, Sample] = {}
        for pi in range(len(self.prompts)):
            mine = [c for c in range(pi * per, (pi + 1) * per) if c in candidates]
            if per > n:  # sorted() is stable: of equal scores the earlier sample wins
                mine = sorted(mine, key=lambda c: -mean_logprob(candidates[c]))[:n]
            out.update({pi * n + rank: candidates[c] for rank, c in enumerate(mine)})
        return out

    def usage(self, samples: Iterable[Sample]) -> dict:
        """Every candidate's tokens count (best_of generates them all), as OpenAI bills them."""
        prompt_tokens = sum(len(ids) for ids in self.encoded)  # once per prompt, however many samples
        completion = sum(len(s.tokens) for s in samples)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def include_usage(self) -> bool:
        return bool(self.body.stream_options and self.body.stream_options.include_usage)

    def top_of(
        self, chosen: int, logprob: float | None, top: list[tuple[int, float]] | None
    ) -> list[tuple[int, float]]:
        """The body's top-N alternatives and the chosen token, as OpenAI lists them (N or N + 1 entries)."""
        alternatives = list((top or [])[: self.body.logprobs or 0])
        if logprob is not None and all(t != chosen for t, _ in alternatives):
            alternatives.append((chosen, logprob))
        return alternatives


def mean_logprob(s: Sample) -> float:
    """A candidate's mean log-probability per generated token; one with no tokens ranks last."""
    values = [st.logprob for st in s.steps if st.logprob is not None]
    return sum(values) / len(values) if values else float("-inf")


def _max_new(body: CompletionRequest, options: ServeOptions) -> int:
    """New tokens per row: max_tokens, or for null (chat's default) as many as the server allows. Capped by
    --max-tokens-limit either way (a null once ran to the end of the context past it: found by the API fuzzer).
    Not by the context: a row that fills it slides its window on (decoding's sliding window), as it does
    when prompt + max_tokens pass it, so a max_tokens over n_ctx is honoured, not silently cut to n_ctx."""
    return options.max_tokens_limit if body.max_tokens is None else body.max_tokens


def _decoder_logprobs(body: CompletionRequest) -> int:
    """Alternatives the decoder records per step: the body's, and at least 1 whenever logprobs are asked or
    best_of ranks candidates (the decoder records the chosen token's logprob only when asked for some)."""
    ranks = (body.best_of or body.n) > body.n
    return max(body.logprobs or 0, 1) if (body.logprobs is not None or ranks) else 0


def _is_ids(prompt: Any) -> bool:
    """A prompt given as token ids (a list of ints; [] counts, and is refused by _token_prompt)."""
    return isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)


def _token_prompt(ids: list[int], lm: LM) -> list[int]:
    """A token-id prompt, checked: ids of this vocabulary, at least one, and room for a new token."""
    if not ids:
        raise APIError(400, "a token-id prompt is empty", param="prompt")
    check_token_ids(ids, lm, param="prompt")
    if len(ids) >= lm.config.n_ctx:
        raise PromptTooLong(len(ids), lm.config.n_ctx)
    return list(ids)


def check_token_ids(ids: list[int], lm: LM, *, param: str) -> None:
    """Ids the tokenizer can decode and the model can read (a padded vocabulary's extra rows are neither)."""
    n_vocab = min(lm.config.n_vocab, lm.tokenizer.n_vocab)
    bad = next((t for t in ids if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside this model's vocabulary (0..{n_vocab - 1})", param=param)


def finish_reason(s: Sample) -> str:
    return "stop" if s.finish_reason == "stop" else "length"


# --- /v1/completions' layout ----------------------------------------------------------------------


class TextLayout:
    """Results in /v1/completions' layout: text, OpenAI's logprobs object, usage."""

    def __init__(self, completion: Completion):
        self.c = completion

    def echo_of(self, ci: int) -> str:
        """The prompt text of choice ci, when echo asks for it."""
        return (self.c.prompts[ci // self.c.body.n] or "") if self.c.body.echo else ""

    def logprobs(self, steps, offset: int, prompt_part=None) -> dict:
        """OpenAI's logprobs object for the echoed prompt's tokens (if any), then the new ones."""
        tok = self.c.lm.tokenizer
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        pos = offset

        def add(token: int, logprob: float | None, top: dict | None) -> None:
            nonlocal pos
            s = tok.decode([token])
            out["tokens"].append(s), out["token_logprobs"].append(logprob), out["top_logprobs"].append(top)
            out["text_offset"].append(pos)
            pos += len(s)

        def alternatives(token: int, logprob: float | None, top) -> dict:
            return {tok.decode([i]): v for i, v in self.c.top_of(token, logprob, top)}

        if prompt_part is not None:
            ids, results = prompt_part
            for t, (lp, top) in zip(ids, results):  # the first prompt token has no logprob: null, as OpenAI's
                add(t, lp, alternatives(t, lp, top) if lp is not None else None)
        for st in steps:
            add(st.token, st.logprob, alternatives(st.token, st.logprob, st.top))
        return out

    def choice(self, ci: int, s: Sample, prompt_results: list) -> dict:
        lp = None
        if self.c.body.logprobs is not None:
            pi = ci // self.c.body.n
            prompt_part = (self.c.encoded[pi], prompt_results[pi]) if self.c.body.echo and prompt_results else None
            lp = self.logprobs(s.steps + ([s.end_step] if s.end_step else []), 0, prompt_part)
        return {"text": self.echo_of(ci) + s.completion, "index": ci, "logprobs": lp, "finish_reason": finish_reason(s)}

    async def response(self, req: Request) -> dict:
        chosen, candidates = await self.c.collect(req)
        choices = [self.choice(ci, chosen[ci], self.c.prompt_results(req)) for ci in sorted(chosen)]
        return {
            "id": self.c.id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.c.model_name,
            "choices": choices,
            "usage": self.c.usage(candidates.values()),
        }

    async def stream(self, req: Request) -> AsyncIterator[str]:
        """Server-sent events: the echoed prompt, each piece as it exists, a finish per choice, usage if asked
        (stream_options.include_usage), [DONE]."""
        created = int(time.time())
        samples: list[Sample] = []
        offsets: dict[int, int] = {}  # text offset of each choice's next piece (without best_of, choice = candidate)
        async for ev in self.c.events(req):
            if isinstance(ev, Exception):
                yield f"data: {json.dumps({'error': {'message': str(ev), 'type': 'server_error'}})}\n\n"
                break
            ci = self.c.candidate_of(ev)
            if ci not in offsets:
                prefix = self.echo_of(ci)
                offsets[ci] = len(prefix)
                if prefix:
                    yield self._chunk(
                        created,
                        [
                            {
                                "text": prefix,
                                "index": ci,
                                "logprobs": self._echo_logprobs(ci, req),
                                "finish_reason": None,
                            }
                        ],
                    )
            if isinstance(ev, Piece):
                lp = self.logprobs(ev.steps, offsets[ci]) if self.c.body.logprobs is not None else None
                offsets[ci] += len(ev.text)
                yield self._chunk(created, [{"text": ev.text, "index": ci, "logprobs": lp, "finish_reason": None}])
            elif isinstance(ev, Sample):
                samples.append(ev)
                end = [ev.end_step] if ev.end_step and self.c.body.logprobs is not None else []
                lp = self.logprobs(end, offsets[ci]) if end else None
                yield self._chunk(
                    created, [{"text": "", "index": ci, "logprobs": lp, "finish_reason": finish_reason(ev)}]
                )
        if self.c.include_usage():
            yield self._chunk(created, [], usage=self.c.usage(samples))
        yield "data: [DONE]\n\n"

    def _echo_logprobs(self, ci: int, req: Request) -> dict | None:
        """The echoed prompt's logprobs, in the chunk that echoes it: the engine scored the prompt in its
        prefill, which ends before the choice's first event."""
        pi = ci // self.c.body.n
        results = self.c.prompt_results(req)
        if self.c.body.logprobs is None or not results or results[pi] is None:
            return None
        return self.logprobs([], 0, (self.c.encoded[pi], results[pi]))

    def _chunk(self, created: int, choices: list, usage: dict | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.c.id,
            "object": "text_completion",
            "created": created,
            "model": self.c.model_name,
            "choices": choices,
        }
        if self.c.include_usage():  # OpenAI's: every chunk has usage (null but in the last) when asked
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
