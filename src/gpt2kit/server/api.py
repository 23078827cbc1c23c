"""OpenAI-compatible HTTP API (POST /v1/completions, GET /v1/models, GET /health) and the playground.

Thin: each route checks what HTTP owns (authentication, body size, readiness) and hands the rest
to completions.py and the engine.
"""
from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from ..lm import LM
from ..options import ServeOptions
from ..paths import STATIC_DIR
from .completions import APIError, Completion, CompletionRequest
from .engine import Engine, Refused, Request


class NextTokenRequest(BaseModel):
    prompt: str = ""
    top: int = Field(default=20, ge=1, le=100)


@dataclass
class Served:
    """What every route reads: the engine, the name clients use, and the server's options."""
    engine: Engine
    model_name: str
    options: ServeOptions
    created: int = field(default_factory=lambda: int(time.time()))

    def ready_model(self) -> LM:
        """The loaded model, or 503 while it loads (or if it could not)."""
        if self.engine.load_error:
            raise APIError(503, f"the model failed to load: {self.engine.load_error}", type_="server_error")
        if self.engine.lm is None:
            raise APIError(503, "the model is still loading; try again in a moment", type_="server_error")
        return self.engine.lm


def create_app(engine: Engine, *, model_name: str, options: ServeOptions) -> FastAPI:
    app = FastAPI(title="gpt2kit", docs_url="/docs", redoc_url=None)
    served = Served(engine, model_name, options)
    _add_error_handlers(app)
    _add_guard(app, options)
    _add_status_routes(app, served)
    _add_generation_routes(app, served)
    app.get("/")(_index)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def _index():
    return FileResponse(STATIC_DIR / "index.html")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", [])[1:]) or None
        return JSONResponse(APIError(400, f"{param}: {first.get('msg', 'invalid request')}", param=param).body(),
                            status_code=400)


def _add_guard(app: FastAPI, options: ServeOptions) -> None:
    """Body size before anything is parsed, and the API key on /v1/ (the playground's page is open)."""
    app.add_middleware(_Guard, limit=options.max_request_bytes, api_key=options.api_key)


class _Guard:
    """A plain ASGI middleware, not @app.middleware("http"): that one wraps `receive`, and a route then
    never hears that its client hung up (Request.is_disconnected stays False)."""

    def __init__(self, inner, *, limit: int, api_key: str | None):
        self.inner, self.limit, self.api_key = inner, limit, api_key

    async def __call__(self, scope, receive, send):
        answer = self.refusal(scope) if scope["type"] == "http" else None
        if answer is None and scope["type"] == "http" and "content-length" not in _headers(scope):
            # A chunked body has no length to check up front: read it here, at most `limit` bytes.
            body, answer = await self.read_at_most(receive)
            receive = _replay(body, receive)
        if answer is not None:
            return await answer(scope, receive, send)
        return await self.inner(scope, receive, send)

    def refusal(self, scope) -> JSONResponse | None:
        headers = _headers(scope)
        try:
            size = int(headers.get("content-length") or 0)
        except ValueError:
            size = 0
        if size > self.limit:
            return _too_large(f"the request body is {size} bytes; the limit is {self.limit}")
        if self.api_key and scope["path"].startswith("/v1/"):
            # compare_digest: the time taken says nothing about how much of a guessed key was right
            if not hmac.compare_digest(headers.get("authorization", "").encode(), f"Bearer {self.api_key}".encode()):
                return JSONResponse(APIError(401, "invalid or missing API key: send Authorization: Bearer <key>",
                                             type_="authentication_error", code="invalid_api_key").body(), 401)
        return None

    async def read_at_most(self, receive) -> tuple[bytes, JSONResponse | None]:
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return body, None
            body += message.get("body", b"")
            if len(body) > self.limit:
                return body, _too_large(f"the request body is over {self.limit} bytes, the limit")
            if not message.get("more_body"):
                return body, None


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _too_large(message: str) -> JSONResponse:
    return JSONResponse(APIError(413, message).body(), 413)


def _replay(body: bytes, receive):
    """`receive` that gives the body already read, then the connection's own messages (a disconnect still
    reaches the route)."""
    sent = False

    async def receive_replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return receive_replayed


def _add_status_routes(app: FastAPI, served: Served) -> None:
    engine = served.engine

    @app.get("/health")
    async def health():
        if engine.load_error:
            return JSONResponse({"status": "error", "error": engine.load_error}, status_code=503)
        if not engine.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": served.model_name, "batches": engine.batches_run,
                "requests": engine.requests_done, "cancelled_rows": engine.cancelled_rows,
                "queue_depth": engine.queue_depth, "running_rows": engine.running_rows}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.model_name, "object": "model", "created": served.created,
                                            "owned_by": "gpt2kit"}]}

    @app.get("/v1/info")
    async def info():
        c = served.ready_model().config
        return {"model": served.model_name, "n_ctx": c.n_ctx, "n_layer": c.n_layer, "n_embd": c.n_embd,
                "n_head": c.n_head, "n_vocab": c.n_vocab, "max_tokens_limit": served.options.max_tokens_limit,
                "auth": bool(served.options.api_key)}


def _add_generation_routes(app: FastAPI, served: Served) -> None:
    engine = served.engine

    @app.post("/v1/next_token")
    async def next_token(body: NextTokenRequest):
        lm = served.ready_model()
        top = await asyncio.to_thread(engine.call, lambda m: m.next_token_probs(body.prompt or None, body.top))
        return {"prompt": body.prompt, "tokens": [{"token": lm.tokenizer.decode([i]), "id": i, "prob": p} for i, p in top]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest):
        lm = served.ready_model()
        completion = Completion.build(body, lm, model_name=served.model_name, options=served.options,
                                      reserve=engine.reserve)
        req = Request(jobs=completion.jobs, sink=asyncio.Queue(), loop=asyncio.get_running_loop(),
                      prompt_logprobs=completion.prompt_logprobs())
        try:
            engine.submit(req)
        except Refused as e:  # queue full (429), a row that never fits (400), shutting down (503): before any work
            raise APIError(e.status, str(e), type_=e.type_) from None
        if body.stream:
            return StreamingResponse(completion.stream(req), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _unless_client_leaves(completion.collect(req), http, req)


async def _unless_client_leaves(answer, http: HTTPRequest, req: Request, every: float = 0.1):
    """Await `answer`, cancelling the request's rows if the client hangs up first: a non-streaming client
    that left would otherwise keep its rows decoding for nobody (a streaming one is noticed by its stream)."""
    task = asyncio.ensure_future(answer)
    while not task.done():
        await asyncio.wait({task}, timeout=every)
        if not task.done() and await http.is_disconnected():
            req.cancel()
            task.cancel()
            raise APIError(499, "the client closed the connection", type_="client_closed_request")
    return task.result()

