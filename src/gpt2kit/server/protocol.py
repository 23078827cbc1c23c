"""The API's bodies as pydantic models: what requests may hold, and what answers hold, for the OpenAPI
schema at /openapi.json (clients and the API fuzzer read it). Requests follow OpenAI's and vLLM's field
names; sampling values are checked by SamplingSettings, the library's one rule, and the bounds written
here are OpenAI's own API limits."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..options import GenerateOptions as G

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on logprobs / top_logprobs
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with usage and no choices (every other chunk: usage null)


class SamplingFields(BaseModel):
    """What completions and chat completions share."""
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float = Field(default=G.temperature, le=2.0)
    top_p: float = G.top_p
    top_k: int = G.top_k  # extension
    repetition_penalty: float = G.repetition_penalty  # extension
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = G.presence_penalty
    frequency_penalty: float = G.frequency_penalty
    # Token id (a decimal string, as JSON keys are) -> bias in [-100, 100] added to its logit.
    logit_bias: dict[str, float] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)
    user: str | None = None


class CompletionRequest(SamplingFields):
    # Text, texts, token ids, or lists of token ids (what lm-evaluation-harness sends), as OpenAI's API takes.
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default, not the library's (to the end of the context)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=16)
    suffix: str | None = None


class TextPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)  # None: to the end of the context or the token limit
    max_completion_tokens: int | None = Field(default=None, ge=0)  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[dict] | None = None  # refused when not empty: GPT-2 calls no tools


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int]


# --- answers --------------------------------------------------------------------------------------

class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # the first prompt token's is null: nothing comes before it
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str
