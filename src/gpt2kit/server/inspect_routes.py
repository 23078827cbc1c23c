"""POST /v1/inspect (an extension): GLTR's view of a text under a served model, the JSON that
`gpt2kit inspect --format json` prints. The playground's Inspect mode reads it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import FastAPI
from pydantic import BaseModel, Field

from ..errors import UserError
from ..options import DetectOptions, InspectOptions
from ..provenance.inspect import inspect
from ..provenance.watermark import detect
from .completions import APIError
from .protocol import REQUEST, ErrorResponse, Text, whole

if TYPE_CHECKING:
    from .api import Served

# A request inspects at most 16 windows of GPT-2's context (its first window, then half windows): each is a
# full forward pass on the request's thread. Longer texts: `gpt2kit inspect`, which has no such limit.
MAX_TOKENS = 8704


class InspectRequest(BaseModel):
    model_config = REQUEST
    model: str | None = None
    text: Text = Field(min_length=1)
    alternatives: whole(ge=0, le=InspectOptions.ALTERNATIVES_MAX) = InspectOptions.alternatives
    context_length: whole(ge=0) | None = InspectOptions.context_length  # None or 0: the model's context


class InspectAlternative(BaseModel):
    id: int
    text: str
    prob: float


class InspectToken(InspectAlternative):
    rank: int
    top_id: int
    top_text: str
    top_prob: float
    entropy: float
    alternatives: list[InspectAlternative]
    bucket: int  # 0: top 10, 1: top 100, 2: top 1000, 3: the rest


class InspectBucket(BaseModel):
    name: str
    max_rank: int | None  # None: the rest
    count: int
    share: float


class InspectHistogram(BaseModel):
    edges: list[float]
    counts: list[int]


class InspectResponse(BaseModel):
    model: str
    window: int
    text: str
    tokens: list[InspectToken]
    buckets: list[InspectBucket]
    mean_log_rank: float
    histograms: dict[str, InspectHistogram]  # ratio: p(token) / p(top) in tenths; entropy: in nats


def add_inspect_routes(app: FastAPI, served: Served) -> None:
    @app.post(
        "/v1/inspect",
        response_model=InspectResponse,
        responses={code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 503)},
    )
    async def inspect_route(body: InspectRequest):
        """Each token's rank, probability, top prediction and entropy under the model, with GLTR's buckets
        (top 10, 100, 1000, the rest) and histograms (an extension)."""
        picked, lm = served.ready_model(body.model)
        count = len(lm.tokenizer.encode(body.text))
        if count > MAX_TOKENS:
            raise APIError(
                400,
                f"text: {count} tokens; this server inspects at most {MAX_TOKENS} (`gpt2kit inspect` takes any length)",
                param="text",
            )
        try:
            result = await asyncio.to_thread(
                picked.engine.call,
                lambda m: inspect(m, body.text, context_length=body.context_length, alternatives=body.alternatives),
            )
        except UserError as e:
            raise APIError(400, str(e), param="text") from None
        return {**result.as_dict(), "model": picked.id}

    add_detect_route(app, served)


class DetectRequest(BaseModel):
    model_config = REQUEST
    model: str | None = None  # whose tokenizer reads the text (no model runs)
    text: Text = Field(min_length=1)
    watermark_key: whole(ge=0)
    watermark_gamma: float = Field(DetectOptions.watermark_gamma, gt=0, lt=1)
    watermark_context_width: whole(ge=1) = DetectOptions.watermark_context_width
    z_threshold: float = DetectOptions.z_threshold
    ignore_repeated_ngrams: bool = DetectOptions.ignore_repeated_ngrams


class DetectResponse(BaseModel):
    scored: int
    green: int
    gamma: float
    z: float
    p_value: float
    z_threshold: float
    green_fraction: float
    watermarked: bool
    verdict: str


def add_detect_route(app: FastAPI, served: Served) -> None:
    @app.post(
        "/v1/detect",
        response_model=DetectResponse,
        responses={code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 503)},
    )
    async def detect_route(body: DetectRequest):
        """Kirchenbauer et al.'s z-test for the watermark of `watermark_key` in `text` (an extension, as
        `gpt2kit detect`): needs only the tokenizer."""
        _, lm = served.ready_model(body.model)
        try:
            found = detect(
                lm.tokenizer.encode(body.text),
                key=body.watermark_key,
                gamma=body.watermark_gamma,
                context_width=body.watermark_context_width,
                z_threshold=body.z_threshold,
                ignore_repeated_ngrams=body.ignore_repeated_ngrams,
            )
        except UserError as e:
            raise APIError(400, str(e), param="watermark_key") from None
        return found.as_dict()
