"""What wraps the API's routes: checks before a body is parsed, outcome counts, and the served schema.

    Guard                    the body-size limit (413) and the API key (401), before anything is parsed
    Outcomes                 each generation request counted by what it answered, for /metrics
    document_answers         /openapi.json says what is answered: 400 in OpenAI's shape, never FastAPI's 422,
                             and the models that streamed events carry

Plain ASGI middlewares, not @app.middleware("http"): that one wraps `receive`, and a route then never hears
that its client hung up (Request.is_disconnected stays False).
"""

from __future__ import annotations

import hmac
from typing import Sequence

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .completions import APIError
from .metrics import Metrics

GENERATION_ROUTES = ("/v1/completions", "/v1/chat/completions")  # counted by outcome in /metrics
PROTECTED = ("/v1/", "/tokenize", "/detokenize")  # what --api-key guards (the playground's page and /metrics are open)
COMPONENTS = "#/components/schemas/"


class Guard:
    """Refuses, before anything is parsed, a body over `limit` bytes (413) and, on PROTECTED paths, a request
    without the API key (401); a chunked body, which has no length to check up front, is read up to the limit."""

    # A refused request's unread body is read and dropped, up to this many times the limit, before the
    # answer: closing a socket with unread data makes the kernel send a reset, and the client then
    # never sees the 413 or 401 (a lingering close, as nginx does). Beyond that, the client gets the reset.
    DRAIN_FACTOR = 8

    def __init__(self, inner, *, limit: int, api_key: str | None):
        self.inner, self.limit, self.api_key = inner, limit, api_key

    async def __call__(self, scope, receive, send):
        answer = self.refusal(scope) if scope["type"] == "http" else None
        complete = False  # whether the whole body has been read
        if answer is None and scope["type"] == "http" and "content-length" not in _headers(scope):
            # A chunked body has no length to check up front: read it here, at most `limit` bytes.
            body, answer, complete = await self.read_at_most(receive)
            if answer is None:
                return await self.inner(scope, _replay(body, receive), send)
        if answer is not None:
            if not complete:
                await _discard_body(receive, self.DRAIN_FACTOR * self.limit)
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
        if self.api_key and scope["path"].startswith(PROTECTED):
            # compare_digest: the time taken says nothing about how much of a guessed key was right
            if not hmac.compare_digest(headers.get("authorization", "").encode(), f"Bearer {self.api_key}".encode()):
                return JSONResponse(
                    APIError(
                        401,
                        "invalid or missing API key: send Authorization: Bearer <key>",
                        type_="authentication_error",
                        code="invalid_api_key",
                    ).body(),
                    401,
                )
        return None

    async def read_at_most(self, receive) -> tuple[bytes, JSONResponse | None, bool]:
        """(the body, a 413 if it is over the limit, whether the body was read to its end)."""
        body = bytearray()  # grows in place: += on bytes would copy the body once per chunk
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return bytes(body), None, True
            body += message.get("body", b"")
            if len(body) > self.limit:
                return (
                    b"",
                    _too_large(f"the request body is over {self.limit} bytes, the limit"),
                    not message.get("more_body"),
                )
            if not message.get("more_body"):
                return bytes(body), None, True


async def _discard_body(receive, most: int) -> None:
    """Read and drop the rest of a request's body, at most `most` bytes."""
    seen = 0
    while seen <= most:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return
        seen += len(message.get("body", b""))


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


class Outcomes:
    """Counts each generation request's outcome for /metrics from what it answered: ok, bad_request (4xx),
    rate_limited (429), error (5xx, or a bug), cancelled (499, or a stream whose client left before its end)."""

    def __init__(self, inner, *, metrics: Metrics):
        self.inner, self.metrics = inner, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in GENERATION_ROUTES:
            return await self.inner(scope, receive, send)
        status, finished, failed = None, False, False

        async def observed(message):
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        try:
            await self.inner(scope, receive, observed)
        except Exception:
            failed = True
            raise
        finally:
            self.metrics.request(scope["path"], _outcome(status, finished, failed))


def _outcome(status: int | None, finished: bool, failed: bool) -> str:
    if failed or (status or 0) >= 500:
        return "error"
    if status == 499 or status is None or not finished:
        return "cancelled"
    return "rate_limited" if status == 429 else "bad_request" if status >= 400 else "ok"


def document_answers(app: FastAPI, *, models: Sequence[type[BaseModel]] = ()) -> None:
    """/openapi.json says what is answered: a body that does not validate gets 400 in OpenAI's shape (the app's
    handler), never FastAPI's 422; and `models`, which no route answers whole (streamed events carry them),
    are in its components for the events' schemas to refer to."""
    make = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = make()
            _errors_as_400(schema)
            _add_components(schema, models)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _errors_as_400(schema: dict) -> None:
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400",
                    {
                        "description": "Bad Request",
                        "content": {"application/json": {"schema": {"$ref": COMPONENTS + "ErrorResponse"}}},
                    },
                )
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)


def _add_components(schema: dict, models: Sequence[type[BaseModel]]) -> None:
    """`models` and those they refer to, as FastAPI writes its own: by name, in serialization mode."""
    if not models:
        return
    _, found = models_json_schema([(m, "serialization") for m in models], ref_template=COMPONENTS + "{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in found.get("$defs", {}).items():
        if components.setdefault(name, definition) != definition:  # two models of one name: clients would see one
            raise RuntimeError(f"/openapi.json: two different schemas are named {name}")
