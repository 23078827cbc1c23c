"""OpenAI-compatible HTTP API (POST /v1/completions, GET /v1/models, GET /health) and the playground."""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..generation import Job, Piece, Sample, encode_prompt, new_seed, sample_seed
from ..sampling import SamplingSettings
from .engine import DONE, Engine, QueueFull, Request

STATIC = Path(__file__).parent / "static"


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_body(e: APIError) -> dict:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | list[str] | None = None
    max_tokens: int | None = Field(default=16, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # extension
    repetition_penalty: float = Field(default=1.0, gt=0.0)  # extension
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    best_of: int | None = None
    suffix: str | None = None
    user: str | None = None


class NextTokenRequest(BaseModel):
    prompt: str = ""
    top: int = Field(default=20, ge=1, le=100)


def create_app(engine: Engine, *, model_name: str, api_key: str | None = None, max_tokens_limit: int = 1024,
               max_request_bytes: int = 1 << 20) -> FastAPI:
    app = FastAPI(title="gpt2kit", docs_url="/docs", redoc_url=None)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(error_body(e), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", [])[1:]) or None
        return JSONResponse(error_body(APIError(400, f"{param}: {first.get('msg', 'invalid request')}", param=param)), status_code=400)

    @app.middleware("http")
    async def _guard(request: HTTPRequest, call_next):
        try:
            size = int(request.headers.get("content-length") or 0)
        except ValueError:
            size = 0
        if size > max_request_bytes:
            return JSONResponse(error_body(APIError(413, f"the request body is {size} bytes; the limit is {max_request_bytes}")), 413)
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                return JSONResponse(error_body(APIError(401, "invalid or missing API key: send Authorization: Bearer <key>",
                                                        type_="authentication_error", code="invalid_api_key")), 401)
        return await call_next(request)

    def require_ready():
        if engine.load_error:
            raise APIError(503, f"the model failed to load: {engine.load_error}", type_="server_error")
        if not engine.ready:
            raise APIError(503, "the model is still loading; try again in a moment", type_="server_error")

    @app.get("/health")
    async def health():
        if engine.load_error:
            return JSONResponse({"status": "error", "error": engine.load_error}, status_code=503)
        if not engine.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": model_name, "batches": engine.batches_run, "requests": engine.requests_done,
                "cancelled_rows": engine.cancelled_rows}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "gpt2kit"}]}

    @app.get("/v1/info")
    async def info():
        require_ready()
        c = engine.lm.config
        return {"model": model_name, "n_ctx": c.n_ctx, "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head,
                "n_vocab": c.n_vocab, "max_tokens_limit": max_tokens_limit, "auth": bool(api_key)}

    @app.post("/v1/next_token")
    async def next_token(body: NextTokenRequest):
        require_ready()
        lm = engine.lm
        top = await asyncio.to_thread(engine.call, lambda m: m.next_token_probs(body.prompt or None, body.top))
        return {"prompt": body.prompt, "tokens": [{"token": lm.tokenizer.decode([i]), "id": i, "prob": p} for i, p in top]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest):
        require_ready()
        lm = engine.lm
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"The model `{body.model}` does not exist; this server serves `{model_name}`",
                           param="model", code="model_not_found")
        if body.best_of not in (None, 1):
            raise APIError(400, "best_of is not available in gpt2kit; use n", param="best_of")
        if body.suffix:
            raise APIError(400, "suffix (insertion) is not available for GPT-2", param="suffix")
        if body.max_tokens is not None and body.max_tokens > max_tokens_limit:
            raise APIError(400, f"max_tokens is {body.max_tokens}; this server allows at most {max_tokens_limit}", param="max_tokens")
        prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
        if not prompts:
            raise APIError(400, "prompt is an empty list", param="prompt")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4:
            raise APIError(400, "at most 4 stop sequences", param="stop")
        n_ctx = lm.config.n_ctx
        encoded = []
        for p in prompts:
            ids = lm.tokenizer.encode(p) if p else [lm.tokenizer.eot_id]
            if len(ids) >= n_ctx:
                raise APIError(413, f"the prompt is {len(ids)} tokens; this model's context is {n_ctx}", param="prompt",
                               code="context_length_exceeded")
            encoded.append(ids)
        try:
            settings = SamplingSettings(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                                        repetition_penalty=body.repetition_penalty, presence_penalty=body.presence_penalty,
                                        frequency_penalty=body.frequency_penalty)
        except UserError as e:
            raise APIError(400, str(e)) from None
        seed = body.seed if body.seed is not None else new_seed()
        max_new = min(body.max_tokens if body.max_tokens is not None else n_ctx, n_ctx)
        jobs, choice_of = [], {}
        for pi, ids in enumerate(encoded):
            for k in range(body.n):
                ci = pi * body.n + k
                job = Job(index=engine.next_index(), prompt=prompts[pi], ids=ids, seed=sample_seed(seed, ci), settings=settings,
                          max_new=max_new, stops=stops, include_prefix=False, logprobs=body.logprobs or 0)
                jobs.append(job)
                choice_of[job.index] = ci
        loop = asyncio.get_running_loop()
        req = Request(jobs=jobs, sink=asyncio.Queue(), loop=loop,
                      prompt_logprobs=encoded if (body.echo and body.logprobs) else None)
        try:
            engine.submit(req)
        except QueueFull as e:
            raise APIError(429, str(e), type_="rate_limit_error") from None
        rid = "cmpl-" + secrets.token_hex(12)
        shape = _Shaper(lm.tokenizer, body, prompts, encoded, req, choice_of)
        if body.stream:
            return StreamingResponse(_stream(req, rid, created_now(), model_name, shape), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        samples: dict[int, Sample] = {}
        try:
            while True:
                ev = await req.sink.get()
                if ev is DONE:
                    break
                if isinstance(ev, Exception):
                    raise APIError(500, f"generation failed: {ev}", type_="server_error")
                if isinstance(ev, Sample):
                    samples[choice_of[ev.index]] = ev
        finally:
            req.cancel()
        choices = [shape.choice(ci, samples[ci]) for ci in sorted(samples)]
        return {"id": rid, "object": "text_completion", "created": created_now(), "model": model_name,
                "choices": choices, "usage": shape.usage(samples.values())}

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def created_now() -> int:
    return int(time.time())


class _Shaper:
    """Turns Samples and Pieces into OpenAI's choice, logprobs and usage layouts."""

    def __init__(self, tokenizer, body: CompletionRequest, prompts, encoded, req: Request, choice_of):
        self.tok, self.body, self.prompts, self.encoded, self.req, self.choice_of = tokenizer, body, prompts, encoded, req, choice_of

    def prompt_of(self, ci: int) -> int:
        return ci // self.body.n

    def logprobs(self, steps, offset: int, prompt_part=None) -> dict:
        tokens, token_lp, top_lp, offsets = [], [], [], []
        pos = offset
        if prompt_part is not None:
            ids, results = prompt_part
            for t, (lp, top) in zip(ids, results):
                s = self.tok.decode([t])
                tokens.append(s), token_lp.append(lp), offsets.append(pos)
                top_lp.append({self.tok.decode([i]): v for i, v in top[: self.body.logprobs]} if top else None)
                pos += len(s)
        for st in steps:
            s = self.tok.decode([st.token])
            tokens.append(s), token_lp.append(st.logprob), offsets.append(pos)
            top_lp.append({self.tok.decode([i]): v for i, v in (st.top or [])[: self.body.logprobs]})
            pos += len(s)
        return {"tokens": tokens, "token_logprobs": token_lp, "top_logprobs": top_lp, "text_offset": offsets}

    def choice(self, ci: int, s: Sample) -> dict:
        pi = self.prompt_of(ci)
        prefix = (self.prompts[pi] or "") if self.body.echo else ""
        lp = None
        if self.body.logprobs is not None:
            prompt_part = (self.encoded[pi], self.req.prompt_results[pi]) if self.body.echo and self.req.prompt_results else None
            lp = self.logprobs(s.steps, 0, prompt_part)
        return {"text": prefix + s.completion, "index": ci, "logprobs": lp,
                "finish_reason": "stop" if s.finish_reason == "stop" else "length"}

    def usage(self, samples) -> dict:
        prompt_tokens = sum(len(ids) for ids in self.encoded)
        completion = sum(len(s.tokens) for s in samples)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


async def _stream(req: Request, rid: str, created: int, model: str, shape: _Shaper):
    def chunk(choices, usage=None) -> str:
        body: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    samples = []
    started: set[int] = set()
    offsets: dict[int, int] = {}
    try:
        while True:
            ev = await req.sink.get()
            if ev is DONE:
                break
            if isinstance(ev, Exception):
                yield f"data: {json.dumps({'error': {'message': str(ev), 'type': 'server_error'}})}\n\n"
                break
            ci = shape.choice_of[ev.index]
            prefix = ""
            if ci not in started:
                started.add(ci)
                prefix = (shape.prompts[shape.prompt_of(ci)] or "") if shape.body.echo else ""
                offsets[ci] = len(prefix)
                if prefix:
                    yield chunk([{"text": prefix, "index": ci, "logprobs": None, "finish_reason": None}])
            if isinstance(ev, Piece):
                lp = shape.logprobs(ev.steps, offsets[ci]) if shape.body.logprobs is not None else None
                offsets[ci] += len(ev.text)
                yield chunk([{"text": ev.text, "index": ci, "logprobs": lp, "finish_reason": None}])
            elif isinstance(ev, Sample):
                samples.append(ev)
                yield chunk([{"text": "", "index": ci, "logprobs": None,
                              "finish_reason": "stop" if ev.finish_reason == "stop" else "length"}])
        yield chunk([], usage=shape.usage(samples))
        yield "data: [DONE]\n\n"
    finally:
        req.cancel()  # the client left (or we are done): stop its rows at the next step
