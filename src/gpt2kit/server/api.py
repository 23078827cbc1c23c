"""OpenAI-compatible HTTP API (POST /v1/completions, GET /v1/models, GET /health) and the playground.

Thin: each route checks what HTTP owns (authentication, body size, readiness), picks the served model
the request's `model` names (models.py; none: the first) and hands the rest to completions.py and
that model's engine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from ..formats.mapped import resident_bytes
from ..lm import LM
from ..options import ServeOptions
from ..paths import STATIC_DIR
from ..sequence import Request
from . import metrics as prometheus
from .chat import ChatLayout, ChatTemplate, as_completion
from .completions import APIError, Completion, TextLayout
from .engine import Refused
from .inspect_routes import add_inspect_routes
from .middleware import Guard, Outcomes, document_answers
from .models import Models, ServedModel
from .protocol import (
    STREAM_MODELS,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatRequest,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    ModelCard,
    ModelList,
    NextTokenRequest,
    NextTokenResponse,
    TokenizeRequest,
    TokenizeResponse,
    event_stream,
)
from .tokens import detokenize, tokenize

OPENAPI_VERSION = "3.2.0"  # the first to describe each event of a stream (itemSchema); FastAPI's own is 3.1.0


def _errors(*codes: int) -> dict:
    """OpenAPI entries for the error answers a route gives, all in OpenAI's shape."""
    return {code: {"model": ErrorResponse} for code in codes}


def _answers(model: type[BaseModel], *codes: int, chunk: type[BaseModel] | None = None) -> dict:
    """OpenAPI entries for a route's answers: `model` as JSON, or with stream: true, server-sent events of `chunk`."""
    ok: dict = {"model": model}
    if chunk is not None:
        ok["content"] = {"text/event-stream": {"itemSchema": event_stream(chunk)}}
    return {200: ok, **_errors(*codes)}


@dataclass
class Served:
    """What every route reads: the served models, the server's options, and its request counters."""

    models: Models
    options: ServeOptions
    chat_template: ChatTemplate
    metrics: prometheus.Metrics = field(default_factory=prometheus.Metrics)

    def ready_model(self, name: str | None) -> tuple[ServedModel, LM]:
        """The model `name` picks (404 if none such) once loaded, or 503 while it loads (or if it could not)."""
        served = self.models.pick(name)
        if served.engine.load_error:
            raise APIError(503, f"the model failed to load: {served.engine.load_error}", type_="server_error")
        if served.engine.lm is None:
            raise APIError(503, "the model is still loading; try again in a moment", type_="server_error")
        return served, served.engine.lm


def create_app(models: Models, *, options: ServeOptions, chat_template: ChatTemplate | None = None) -> FastAPI:
    """chat_template: None reads options' (serve() reads it first, so a bad template stops it before binding)."""
    app = FastAPI(title="gpt2kit", docs_url="/docs", redoc_url=None)
    app.openapi_version = OPENAPI_VERSION
    served = Served(models, options, chat_template or ChatTemplate(options.chat_template, options.chat_stop))
    _add_error_handlers(app)
    app.add_middleware(Guard, limit=options.max_request_bytes, api_key=options.api_key)
    app.add_middleware(Outcomes, metrics=served.metrics)  # outermost: counts the guard's refusals too
    _add_status_routes(app, served)
    _add_generation_routes(app, served)
    _add_token_routes(app, served)
    add_inspect_routes(app, served)
    app.get("/", include_in_schema=False)(_index)
    document_answers(app, models=STREAM_MODELS)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def _index():
    return FileResponse(STATIC_DIR / "index.html")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):  # the framework's own (a body that is not JSON, 404, 405)
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        return JSONResponse(_invalid_body(e.errors()).body(), status_code=400)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}  # pydantic's names of a union's members


def _field_path(error: dict) -> list[str]:
    """Where pydantic found `error`, as the client spells it: without "body", and without a union's member
    tags (prompt.str, stop.list[function-after[...]]), which are pydantic's names, not fields."""
    loc = list(error.get("loc", []))[1:]
    return [str(p) for p in loc if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p))]


def _invalid_body(errors: list) -> APIError:
    """pydantic's complaint as one line a person can act on. Of a union's complaints (one per member), the
    one that got deepest: stop=["ok", <half a surrogate pair>] is about stop.1, not "stop is not a string"."""
    first = max(errors, key=lambda e: len(_field_path(e)), default={})
    loc = list(first.get("loc", []))[1:]
    if first.get("type") == "json_invalid":
        at = f" (at character {loc[0]})" if loc else ""
        return APIError(400, f"the body is not valid JSON{at}: {first.get('ctx', {}).get('error', 'check its syntax')}")
    if not loc:
        return APIError(400, "the body must be a JSON object (send it with Content-Type: application/json)")
    param = ".".join(_field_path(first)) or None
    return APIError(400, f"{param}: {first.get('msg', 'invalid request')}", param=param)


def _add_status_routes(app: FastAPI, served: Served) -> None:
    @app.get("/health", responses={200: {"model": HealthResponse}, 503: {"model": HealthResponse}})
    async def health():
        """ok once every model is in; the totals over the models, then each model's own figures."""
        failed = next((m for m in served.models if m.engine.load_error), None)
        if failed is not None:
            return JSONResponse(
                {"status": "error", "error": f"{failed.id}: {failed.engine.load_error}"}, status_code=503
            )
        if not all(m.engine.ready for m in served.models):
            return JSONResponse({"status": "loading"}, status_code=503)
        each = [_engine_figures(m) for m in served.models]
        totals = {key: sum(f[key] for f in each) for key in each[0] if key not in ("id", "memory")}
        return {
            "status": "ok",
            "model": served.models.first.id,
            **totals,
            "models": each,
            "resident_bytes": resident_bytes(),
        }

    @app.get("/metrics", response_class=Response, responses={200: {"content": {prometheus.CONTENT_TYPE: {}}}})
    async def metrics():
        """Prometheus' text format: requests by outcome, and per model (label model) tokens, queue depth,
        running rows, latencies and memory; the process's resident memory."""
        return Response(served.metrics.render(served.models, resident_bytes()), media_type=prometheus.CONTENT_TYPE)

    @app.get("/v1/models", response_model=ModelList, responses=_errors(401))
    async def models():
        """OpenAI's list; each entry adds its context length and memory (bytes) once loaded."""
        return {"object": "list", "data": [_card(m) for m in served.models]}

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=_errors(401, 404))
    async def model(model_id: str):
        """OpenAI's retrieve-model: one entry of the list (ids may hold a slash, as hub names do)."""
        return _card(served.models.pick(model_id))

    @app.get("/v1/info", response_model=InfoResponse, responses=_errors(401, 404, 503))
    async def info(model: str | None = None):
        """The shape of the model `model` names (none: the first), for the playground."""
        picked, lm = served.ready_model(model)
        c = lm.config
        return {
            "model": picked.id,
            "n_ctx": c.n_ctx,
            "n_layer": c.n_layer,
            "n_embd": c.n_embd,
            "n_head": c.n_head,
            "n_vocab": c.n_vocab,
            "max_tokens_limit": served.options.max_tokens_limit,
            "auth": bool(served.options.api_key),
        }


def _engine_figures(m: ServedModel) -> dict:
    e = m.engine
    return {
        "id": m.id,
        "batches": e.batches_run,
        "requests": e.requests_done,
        "cancelled_rows": e.cancelled_rows,
        "queue_depth": e.queue_depth,
        "running_rows": e.running_rows,
        "memory": m.memory(),
    }


def _card(m: ServedModel) -> dict:
    lm = m.engine.lm
    return {
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": "gpt2kit",
        "max_model_len": lm.config.n_ctx if lm is not None else None,
        "memory": m.memory(),
    }


def _add_generation_routes(app: FastAPI, served: Served) -> None:
    @app.post("/v1/next_token", response_model=NextTokenResponse, responses=_errors(400, 401, 404, 413, 503))
    async def next_token(body: NextTokenRequest):
        picked, lm = served.ready_model(body.model)
        top = await asyncio.to_thread(picked.engine.call, lambda m: m.next_token_probs(body.prompt or None, body.top))
        return {
            "prompt": body.prompt,
            "tokens": [{"token": lm.tokenizer.decode([i]), "id": i, "prob": p} for i, p in top],
        }

    @app.post(
        "/v1/completions",
        responses=_answers(CompletionResponse, 400, 401, 404, 413, 429, 500, 503, chunk=CompletionChunk),
    )
    async def completions(body: CompletionRequest, http: HTTPRequest):
        return await _generate(served, body, http, TextLayout, arrival=time.perf_counter())

    @app.post(
        "/v1/chat/completions",
        responses=_answers(ChatCompletionResponse, 400, 401, 404, 413, 429, 500, 503, chunk=ChatCompletionChunk),
    )
    async def chat_completions(body: ChatRequest, http: HTTPRequest):
        arrival = time.perf_counter()
        served.models.pick(body.model)  # an unknown model is refused before the template runs
        return await _generate(
            served,
            as_completion(body, served.chat_template),
            http,
            ChatLayout,
            arrival=arrival,
            extra_stops=served.chat_template.stops,
        )


async def _generate(
    served: Served,
    body: CompletionRequest,
    http: HTTPRequest,
    layout,
    *,
    arrival: float,
    extra_stops: tuple[str, ...] = (),
):
    """Build the request's jobs, queue them on the model's engine, and answer in `layout` (TextLayout or ChatLayout)."""
    picked, lm = served.ready_model(body.model)
    completion = Completion.build(
        body,
        lm,
        model_name=picked.id,
        options=served.options,
        reserve=picked.engine.reserve,
        metrics=picked.metrics,
        arrival=arrival,
        extra_stops=extra_stops,
    )
    req = completion.request()
    try:
        picked.engine.submit(req)
    except Refused as e:  # queue full (429), a row that never fits (400), shutting down (503): before any work
        raise APIError(e.status, str(e), type_=e.type_) from None
    if body.stream:
        return StreamingResponse(
            layout(completion).stream(req),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await _unless_client_leaves(layout(completion).response(req), http, req)


def _add_token_routes(app: FastAPI, served: Served) -> None:
    @app.post("/tokenize", response_model=TokenizeResponse, responses=_errors(400, 401, 404, 413, 503))
    async def tokenize_route(body: TokenizeRequest):
        return tokenize(served.ready_model(body.model)[1], body)

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_errors(400, 401, 404, 413, 503))
    async def detokenize_route(body: DetokenizeRequest):
        return detokenize(served.ready_model(body.model)[1], body)


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
