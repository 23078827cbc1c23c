"""One /v1/completions request: checked against the server's limits, turned into generation jobs by
generation's own job builder (so a seed gives the CLI's text), and its results put in OpenAI's layout."""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..generation import Job, Piece, PromptTooLong, Sample, encode_prompt, make_jobs, new_seed
from ..lm import LM
from ..options import GenerateOptions, SamplingSettings, ServeOptions
from .engine import DONE, Request

MAX_STOPS = 4  # OpenAI's limit on stop sequences


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


G = GenerateOptions


class CompletionRequest(BaseModel):
    """OpenAI's request body. Sampling values are checked by SamplingSettings, the library's one rule;
    the bounds here are OpenAI's own API limits."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    # Text, texts, token ids, or lists of token ids (what lm-evaluation-harness sends), as OpenAI's API takes.
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    max_tokens: int | None = 16  # OpenAI's default, not the library's (which runs to the end of the context)
    temperature: float = Field(default=G.temperature, le=2.0)
    top_p: float = G.top_p
    top_k: int = G.top_k  # extension
    repetition_penalty: float = G.repetition_penalty  # extension
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    presence_penalty: float = G.presence_penalty
    frequency_penalty: float = G.frequency_penalty
    best_of: int | None = None
    suffix: str | None = None
    user: str | None = None


def _check(body: CompletionRequest, model_name: str, options: ServeOptions) -> None:
    """What the request asks that this server does not do."""
    if body.model is not None and body.model != model_name:
        raise APIError(404, f"The model `{body.model}` does not exist; this server serves `{model_name}`",
                       param="model", code="model_not_found")
    if body.best_of not in (None, 1):
        raise APIError(400, "best_of is not available in gpt2kit; use n", param="best_of")
    if body.suffix:
        raise APIError(400, "suffix (insertion) is not available for GPT-2", param="suffix")
    if body.max_tokens is not None and body.max_tokens > options.max_tokens_limit:
        raise APIError(400, f"max_tokens is {body.max_tokens}; this server allows at most {options.max_tokens_limit}",
                       param="max_tokens")
    rows = (len(body.prompt) if isinstance(body.prompt, list) and body.prompt and not isinstance(body.prompt[0], int)
            else 1) * body.n
    if rows > options.max_request_rows:
        raise APIError(400, f"this request asks for {rows} completions (n x prompts); this server allows at most "
                       f"{options.max_request_rows} per request: split it", param="n")


@dataclass
class Completion:
    """A request's prompts, their token ids and its jobs: n per prompt, choice i is job first_index + i."""
    body: CompletionRequest
    lm: LM
    model_name: str
    prompts: list[str | None]
    encoded: list[list[int]]
    jobs: list[Job]
    first_index: int
    id: str = field(default_factory=lambda: "cmpl-" + secrets.token_hex(12))

    @classmethod
    def build(cls, body: CompletionRequest, lm: LM, *, model_name: str, options: ServeOptions,
              reserve: Any) -> Completion:
        """Check `body`, encode its prompts and make its jobs; `reserve(count)` gives the first job index."""
        _check(body, model_name, options)
        prompts = body.prompt if isinstance(body.prompt, list) and not _is_ids(body.prompt) else [body.prompt]
        if not prompts:
            raise APIError(400, "prompt is an empty list", param="prompt")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > MAX_STOPS:
            raise APIError(400, f"at most {MAX_STOPS} stop sequences", param="stop")
        n_ctx = lm.config.n_ctx
        try:
            encoded = [_token_prompt(p, lm) if _is_ids(p) else encode_prompt(lm.tokenizer, p, n_ctx, truncate=False)
                       for p in prompts]
            prompts = [lm.tokenizer.decode(p) if _is_ids(p) else p for p in prompts]  # the text echo shows
            settings = SamplingSettings(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                                        repetition_penalty=body.repetition_penalty,
                                        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty)
            first = reserve(len(prompts) * body.n)
            jobs = list(make_jobs(prompts, encoded, per_prompt=body.n, seed=new_seed() if body.seed is None else body.seed,
                                  settings=settings, max_new=min(n_ctx if body.max_tokens is None else body.max_tokens, n_ctx),
                                  stops=stops, include_prefix=False, stop_at_eot=True, logprobs=body.logprobs or 0,
                                  index_base=first))
        except PromptTooLong as e:
            raise APIError(413, str(e), param="prompt", code="context_length_exceeded") from None
        except UserError as e:
            raise APIError(400, str(e)) from None
        return cls(body, lm, model_name, prompts, encoded, jobs, first)

    def prompt_logprobs(self) -> list[list[int]] | None:
        """The prompts whose own tokens' logprobs the engine computes (echo with logprobs)."""
        return self.encoded if (self.body.echo and self.body.logprobs) else None

    # --- results in OpenAI's layout --------------------------------------------------------------

    def choice_of(self, ev: Piece | Sample) -> int:
        return ev.index - self.first_index

    def echo_of(self, ci: int) -> str:
        return (self.prompts[ci // self.body.n] or "") if self.body.echo else ""

    def logprobs(self, steps, offset: int, prompt_part=None) -> dict:
        """OpenAI's logprobs object for the echoed prompt's tokens (if any), then the new ones."""
        tok, top_n = self.lm.tokenizer, self.body.logprobs
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        pos = offset

        def add(token: int, logprob: float | None, top: dict | None) -> None:
            nonlocal pos
            s = tok.decode([token])
            out["tokens"].append(s), out["token_logprobs"].append(logprob), out["top_logprobs"].append(top)
            out["text_offset"].append(pos)
            pos += len(s)

        if prompt_part is not None:
            ids, results = prompt_part
            for t, (lp, top) in zip(ids, results):  # the first prompt token has no logprob: null, as OpenAI's
                add(t, lp, {tok.decode([i]): v for i, v in top[:top_n]} if top else None)
        for st in steps:
            add(st.token, st.logprob, {tok.decode([i]): v for i, v in (st.top or [])[:top_n]})
        return out

    def choice(self, ci: int, s: Sample, prompt_results: list) -> dict:
        lp = None
        if self.body.logprobs is not None:
            pi = ci // self.body.n
            prompt_part = (self.encoded[pi], prompt_results[pi]) if self.body.echo and prompt_results else None
            lp = self.logprobs(s.steps, 0, prompt_part)
        return {"text": self.echo_of(ci) + s.completion, "index": ci, "logprobs": lp, "finish_reason": _finish(s)}

    def usage(self, samples: Iterable[Sample]) -> dict:
        prompt_tokens = sum(len(ids) for ids in self.encoded)
        completion = sum(len(s.tokens) for s in samples)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}

    def response(self, samples: dict[int, Sample], prompt_results: list) -> dict:
        choices = [self.choice(ci, samples[ci], prompt_results) for ci in sorted(samples)]
        return {"id": self.id, "object": "text_completion", "created": int(time.time()), "model": self.model_name,
                "choices": choices, "usage": self.usage(samples.values())}

    async def collect(self, req: Request) -> dict:
        """Wait for every sample, then answer at once."""
        samples: dict[int, Sample] = {}
        try:
            while (ev := await req.sink.get()) is not DONE:
                if isinstance(ev, Exception):
                    raise APIError(500, f"generation failed: {ev}", type_="server_error")
                if isinstance(ev, Sample):
                    samples[self.choice_of(ev)] = ev
        finally:
            req.cancel()
        return self.response(samples, req.prompt_results)

    async def stream(self, req: Request) -> AsyncIterator[str]:
        """Server-sent events: the echoed prompt, each piece as it exists, a finish per choice, usage, [DONE]."""
        created = int(time.time())
        samples: list[Sample] = []
        offsets: dict[int, int] = {}  # text offset of each choice's next piece
        try:
            while (ev := await req.sink.get()) is not DONE:
                if isinstance(ev, Exception):
                    yield f"data: {json.dumps({'error': {'message': str(ev), 'type': 'server_error'}})}\n\n"
                    break
                ci = self.choice_of(ev)
                if ci not in offsets:
                    prefix = self.echo_of(ci)
                    offsets[ci] = len(prefix)
                    if prefix:
                        yield self._chunk(created, [{"text": prefix, "index": ci, "logprobs": None, "finish_reason": None}])
                if isinstance(ev, Piece):
                    lp = self.logprobs(ev.steps, offsets[ci]) if self.body.logprobs is not None else None
                    offsets[ci] += len(ev.text)
                    yield self._chunk(created, [{"text": ev.text, "index": ci, "logprobs": lp, "finish_reason": None}])
                elif isinstance(ev, Sample):
                    samples.append(ev)
                    yield self._chunk(created, [{"text": "", "index": ci, "logprobs": None, "finish_reason": _finish(ev)}])
            yield self._chunk(created, [], usage=self.usage(samples))
            yield "data: [DONE]\n\n"
        finally:
            req.cancel()  # the client left (or we are done): stop its rows at the next step

    def _chunk(self, created: int, choices: list, usage: dict | None = None) -> str:
        body: dict[str, Any] = {"id": self.id, "object": "text_completion", "created": created, "model": self.model_name,
                                "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _is_ids(prompt: Any) -> bool:
    """A prompt given as token ids (a list of ints; [] counts, and is refused by _token_prompt)."""
    return isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)


def _token_prompt(ids: list[int], lm: LM) -> list[int]:
    """A token-id prompt, checked: ids of this vocabulary, at least one, and room for a new token."""
    if not ids:
        raise APIError(400, "a token-id prompt is empty", param="prompt")
    bad = next((t for t in ids if not 0 <= t < lm.config.n_vocab), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside this model's vocabulary (0..{lm.config.n_vocab - 1})", param="prompt")
    if len(ids) >= lm.config.n_ctx:
        raise PromptTooLong(len(ids), lm.config.n_ctx)
    return list(ids)


def _finish(s: Sample) -> str:
    return "stop" if s.finish_reason == "stop" else "length"
