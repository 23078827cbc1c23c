"""The API's bodies as pydantic models: what requests may hold, and what answers hold, for the OpenAPI
schema at /openapi.json (clients and the API fuzzer read it). Requests follow OpenAI's and vLLM's field
names; sampling values are checked by SamplingSettings, the library's one rule, and the bounds written
here are OpenAI's own API limits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from ..options import PENALTY_RANGE, WATERMARK_DELTA_MAX, WATERMARK_KEY_MAX, GenerateOptions, SamplingSettings

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on logprobs / top_logprobs
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
# Strict: a field takes its schema's JSON type only (no "1" for 1 or 0 for false), so the schema says
# exactly what is accepted; extra fields are ignored, as OpenAI's clients send some this server does not use.
REQUEST = ConfigDict(extra="ignore", strict=True)


def _whole(value):
    """JSON Schema counts 6.0 as an integer: take it as 6 (a strict int would refuse it)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def whole(**bounds) -> type:
    """An integer field taking whole floats; its bounds inside, where the schema shows them as minimum/maximum
    (bounds given around a validated type would come out as pydantic's own "ge"/"le")."""
    return Annotated[int, Field(**bounds), BeforeValidator(_whole)]


Int = whole()
TokenId = whole(ge=0)  # below the model's vocabulary size too, checked once it is loaded


def _unicode(value: str) -> str:
    """JSON's \\ud800 escapes decode to lone surrogates, which no UTF-8 answer can carry (echo failed with 500)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"the text holds {value[e.start]!r} at character {e.start}, half of a UTF-16 surrogate "
            f"pair: send whole characters"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]  # any text the model reads or the answer repeats


class StreamOptions(BaseModel):
    model_config = REQUEST
    include_usage: bool = False  # a last chunk with usage and no choices (every other chunk: usage null)


class JSONSchemaFormat(BaseModel):
    model_config = REQUEST
    name: Text = Field(max_length=64)  # OpenAI's limit
    description: Text | None = None
    schema_: dict = Field(alias="schema")  # `schema` would shadow BaseModel's own attribute
    strict: bool | None = None  # always strict here: the output is generated inside the schema


class ResponseFormat(BaseModel):
    """OpenAI's response_format: text (free), any JSON object, or JSON that follows json_schema.schema."""

    model_config = REQUEST
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None  # with type json_schema (and only then)


class StructuredOutputs(BaseModel):
    """vLLM's structured_outputs: one of its fields."""

    model_config = REQUEST
    json_: dict | Text | None = Field(default=None, alias="json")  # a JSON Schema, as an object or as JSON text
    regex: Text | None = None
    choice: list[Text] | None = Field(default=None, min_length=1)
    grammar: Text | None = None  # Lark (llguidance's variant) or llama.cpp's GBNF
    json_object: bool | None = None


class WatermarkFields(BaseModel):
    """Kirchenbauer et al.'s watermark, seeded as transformers' "lefthash" (gpt2kit detect finds it)."""

    model_config = REQUEST
    key: whole(ge=1, le=WATERMARK_KEY_MAX)
    gamma: float = Field(default=GenerateOptions.watermark_gamma, gt=0, lt=1)  # the green list's share
    delta: float = Field(default=GenerateOptions.watermark_delta, gt=0, le=WATERMARK_DELTA_MAX)  # added to green logits
    context_width: whole(ge=1) = GenerateOptions.watermark_context_width


class SamplingFields(BaseModel):
    """What completions and chat completions share. The sampling ranges are SamplingSettings' (which checks
    them again for every caller of the library), written here too so that the schema states them."""

    model_config = REQUEST
    model: str | None = None
    temperature: float = Field(default=GenerateOptions.temperature, ge=0, le=2.0)  # 0: greedy; 2: OpenAI's limit
    top_p: float = Field(default=GenerateOptions.top_p, gt=0, le=1)
    top_k: Int = Field(default=GenerateOptions.top_k, ge=0)  # extension
    repetition_penalty: float = Field(  # extension
        default=GenerateOptions.repetition_penalty, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1]
    )
    n: Int = Field(default=1, ge=1, le=16)
    stop: Text | list[Text] | None = None
    seed: Int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=GenerateOptions.presence_penalty, ge=-2, le=2)
    frequency_penalty: float = Field(default=GenerateOptions.frequency_penalty, ge=-2, le=2)
    # Token id (a decimal string, as JSON keys are) -> bias in [-100, 100] added to its logit.
    # (Keys are checked where the vocabulary is known; propertyNames states their form in the schema.)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS, json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}}
    )
    user: str | None = None
    # The samplers of issue 29 under vLLM's and llama.cpp's names (transformers' for epsilon_cutoff and
    # eta_cutoff, which neither server has); each default is off.
    min_p: float = Field(default=GenerateOptions.min_p, ge=0, le=1)
    typical_p: float = Field(default=GenerateOptions.typical_p, ge=0, le=1)
    epsilon_cutoff: float = Field(default=GenerateOptions.epsilon_cutoff, ge=0, lt=1)
    eta_cutoff: float = Field(default=GenerateOptions.eta_cutoff, ge=0, lt=1)
    top_n_sigma: float = Field(default=GenerateOptions.top_n_sigma, allow_inf_nan=False)  # 0 or less: off
    mirostat: Literal[0, 2] = GenerateOptions.mirostat  # llama.cpp's 1 (mirostat v1) is not offered
    mirostat_tau: float = Field(default=GenerateOptions.mirostat_tau, ge=0, le=100)
    mirostat_eta: float = Field(default=GenerateOptions.mirostat_eta, ge=0, le=1)
    dry_multiplier: float = Field(default=GenerateOptions.dry_multiplier, ge=0, allow_inf_nan=False)
    dry_base: float = Field(default=GenerateOptions.dry_base, ge=1, allow_inf_nan=False)
    dry_allowed_length: whole(ge=0) = GenerateOptions.dry_allowed_length
    dry_penalty_last_n: whole(ge=-1) = GenerateOptions.dry_penalty_last_n  # -1: every token
    dry_sequence_breakers: list[Annotated[Text, Field(min_length=1, max_length=SamplingSettings.DRY_BREAKER_MAX)]] = (
        Field(default_factory=lambda: list(GenerateOptions.dry_sequence_breakers))
    )
    xtc_threshold: float = Field(default=GenerateOptions.xtc_threshold, ge=0, le=1)
    xtc_probability: float = Field(default=GenerateOptions.xtc_probability, ge=0, le=1)
    penalty_alpha: float = Field(default=GenerateOptions.penalty_alpha, ge=0, le=1)  # contrastive search (with top_k)
    ignore_eos: bool = Field(  # vLLM's and llama.cpp's name
        default=False, description="keep generating past <|endoftext|>, to max_tokens"
    )
    repeat_penalty: float | None = Field(  # llama.cpp's name for repetition_penalty
        default=None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1]
    )
    # Structured output: at most one of these per request (server/settings.py reads them).
    response_format: ResponseFormat | None = Field(default=None, description="OpenAI's structured output")
    structured_outputs: StructuredOutputs | None = Field(default=None, description="vLLM's structured output")
    guided_json: dict | Text | None = Field(default=None, description="vLLM's: a JSON Schema the output follows")
    guided_regex: Text | None = Field(default=None, description="vLLM's: a regex the whole output matches")
    guided_choice: list[Text] | None = Field(default=None, min_length=1, description="vLLM's: one of these texts")
    guided_grammar: Text | None = Field(default=None, description="vLLM's: a Lark or GBNF grammar")
    json_schema: dict | None = Field(default=None, description="llama.cpp's: a JSON Schema the output follows")
    grammar: Text | None = Field(default=None, description="llama.cpp's: a GBNF (or Lark) grammar")
    watermark: WatermarkFields | None = Field(  # extension: gpt2kit.provenance
        default=None, description="Kirchenbauer et al.'s watermark, as transformers seeds it (gpt2kit detect)"
    )


class CompletionRequest(SamplingFields):
    # Text, texts, token ids, or lists of token ids (what lm-evaluation-harness sends), as OpenAI's API takes.
    prompt: Text | list[Text] | list[TokenId] | list[list[TokenId]] | None = None
    max_tokens: whole(ge=0) | None = 16  # OpenAI's default, not the library's (to the end of the context)
    logprobs: whole(ge=0, le=MAX_TOP_LOGPROBS) | None = None
    echo: bool = False
    best_of: whole(ge=1, le=16) | None = None
    suffix: str | None = None


class TextPart(BaseModel):
    model_config = REQUEST
    type: str
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = REQUEST
    role: Literal["system", "developer", "user", "assistant"]  # GPT-2 calls no tools: no "tool" messages
    content: Text | list[TextPart] | None = None
    name: Text | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: whole(ge=0) | None = None  # None: to the end of the context or the token limit
    max_completion_tokens: whole(ge=0) | None = None  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: whole(ge=0, le=MAX_TOP_LOGPROBS) | None = None
    tools: list[dict] | None = None  # refused when not empty: GPT-2 calls no tools


class NextTokenRequest(BaseModel):
    model_config = REQUEST
    model: str | None = None
    prompt: Text = ""
    top: Int = Field(default=20, ge=1, le=100)


class TokenizeRequest(BaseModel):
    model_config = REQUEST
    model: str | None = None
    prompt: Text


class DetokenizeRequest(BaseModel):
    model_config = REQUEST
    model: str | None = None
    tokens: list[TokenId]


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


# --- streamed answers (stream: true): server-sent events, each one's data a chunk or an error as JSON, or [DONE] ---


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]  # none in the usage chunk
    usage: Usage | None = None  # with stream_options.include_usage: in every chunk, null but in the last


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None  # in each choice's first chunk
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class StreamErrorBody(BaseModel):
    message: str
    type: str


class StreamError(BaseModel):
    """A stream's last event but [DONE] when generation failed after the 200 was sent."""

    error: StreamErrorBody


STREAM_END = "[DONE]"  # the data of a stream's last event
STREAM_MODELS = (CompletionChunk, ChatCompletionChunk, StreamError)  # in the schema's components, for the events


def event_stream(chunk: type[BaseModel]) -> dict:
    """OpenAPI 3.2's itemSchema of a text/event-stream answer: one event, whose data is `chunk` or a StreamError
    as JSON, or STREAM_END. (Events carry no `event:` line, so their type is the default, "message".)"""
    as_json = {"anyOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in (chunk, StreamError)]}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"const": "message"},
            "data": {
                "anyOf": [
                    {"const": STREAM_END},
                    {"type": "string", "contentMediaType": "application/json", "contentSchema": as_json},
                ]
            },
        },
    }


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str


class NextTokenEntry(BaseModel):
    token: str
    id: int
    prob: float


class NextTokenResponse(BaseModel):
    prompt: str
    tokens: list[NextTokenEntry]


class ModelMemory(BaseModel):
    expected_bytes: int  # the estimate checked before loading: weights plus KV budget
    weights_bytes: int | None  # the loaded model's tensors (None while it loads)
    kv_budget_bytes: int | None  # the KV cache its engine may reserve (--max-batch-tokens, else max-batch x context)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int | None = None  # the context, once loaded (vLLM's name)
    memory: ModelMemory | None = None


class ModelHealth(BaseModel):
    id: str
    batches: int
    requests: int
    cancelled_rows: int
    queue_depth: int
    running_rows: int
    memory: ModelMemory


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class InfoResponse(BaseModel):
    model: str
    n_ctx: int
    n_layer: int
    n_embd: int
    n_head: int
    n_vocab: int
    max_tokens_limit: int
    auth: bool


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "error"]  # 503 with "loading" or "error" until the model is in
    model: str | None = None
    batches: int | None = None
    requests: int | None = None
    cancelled_rows: int | None = None
    queue_depth: int | None = None  # engines that count them (continuous batching)
    running_rows: int | None = None
    error: str | None = None
    models: list[ModelHealth] | None = None  # each served model's own figures (the fields above sum them)
    resident_bytes: int | None = None  # the server process's resident memory (VmRSS)
