"""The options of each adapter-facing operation, one frozen dataclass each: the one home of their defaults.

The CLI builds its flags' help from these classes and the server its request defaults, so a default is
written once. (Fine-tuning's options are `training/options.py`'s `TrainOptions`.) This module imports
nothing heavy: `gpt2kit --help` reads it without loading PyTorch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .constraints.spec import Constraint
from .data.extract import ReadOptions
from .errors import UserError


# Temperatures this small are greedy, the limit they approach: dividing logits by less could overflow fp32
# into +inf, a row no token can be drawn from (one such request once failed every request batched with it).
GREEDY_BELOW = 1e-4
PENALTY_RANGE = (1e-4, 1e4)  # repetition_penalty: outside it a seen logit overflows to +-inf (or 0 x inf = NaN)


@dataclass(frozen=True)
class SamplingSettings:
    """The per-row filters of sampling.py (re-exported there); the one rule for their valid ranges."""
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # CTRL's penalty; 1.0 = off
    presence_penalty: float = 0.0  # OpenAI's additive penalties
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI's: (token id, bias in [-100, 100]) added to its logit
    constraint: Constraint | None = None  # JSON schema, regex, grammar or choice (gpt2kit.constraints); None = free

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise UserError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if self.temperature < GREEDY_BELOW:
            object.__setattr__(self, "temperature", 0.0)  # frozen: normalised once, here
        if self.top_k < 0:
            raise UserError(f"top_k must be 0 (off) or a positive number of tokens, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if not PENALTY_RANGE[0] <= self.repetition_penalty <= PENALTY_RANGE[1]:
            raise UserError(f"repetition_penalty must be between {PENALTY_RANGE[0]:g} and {PENALTY_RANGE[1]:g} "
                            f"(1.0 = off), got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise UserError(f"{name} must be between -2 and 2, got {getattr(self, name)}")
        for token, bias in self.logit_bias:
            if token < 0 or not -100 <= bias <= 100:
                raise UserError(f"logit_bias maps token ids (0 or more) to biases in [-100, 100], got {token}: {bias}")


@dataclass(frozen=True)
class GenerateOptions:
    """What `LM.samples` takes besides the prompts: `gpt2kit generate`/`interactive` and the server's defaults."""
    length: int | None = None  # new tokens per sample; None: until <|endoftext|> or the context is full
    temperature: float = SamplingSettings.temperature
    top_k: int = SamplingSettings.top_k
    top_p: float = SamplingSettings.top_p
    repetition_penalty: float = SamplingSettings.repetition_penalty
    presence_penalty: float = SamplingSettings.presence_penalty
    frequency_penalty: float = SamplingSettings.frequency_penalty
    stop: tuple[str, ...] = ()  # stop strings, dropped from the text
    seed: int | None = None  # None: a fresh random seed per call
    nsamples: int = 1  # samples per prompt (the CLI's 0: until interrupted)
    batch_size: int = 1
    truncate: str | None = None  # gpt-2-simple: cut each sample at this text
    include_prefix: bool = True  # the prompt before its continuation
    stop_at_eot: bool = True
    logprobs: int = 0  # top alternatives recorded per step

    def as_kwargs(self) -> dict:
        """The keyword arguments of `LM.samples`."""
        return dataclasses.asdict(self)

    def sampling(self) -> SamplingSettings:
        """The per-row filters these options ask for (their ranges checked: a UserError when one is out)."""
        return SamplingSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingSettings)
                                   if hasattr(self, f.name)})


# PyTorch compute dtypes by the names people type (the short ones are llama.cpp's and PyTorch users' habit),
# each with the torch dtype it names. devices.py maps them to torch; this torch-free module holds the names.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}
INT8 = "int8"  # on CPUs only: weight-only int8 with per-row scales (gpt2kit.cpu.weights)


def dtype_choices() -> str:
    """The --dtype values, for messages: auto, PyTorch's dtypes (and their short names), int8."""
    full = list(dict.fromkeys(DTYPE_NAMES.values()))
    short = [name for name in DTYPE_NAMES if name not in full]
    return f"auto, {', '.join(full)} ({', '.join(short)}) or {INT8}"


@dataclass(frozen=True)
class LoadOptions:
    """How `load` reads a model (every command with --model, and each model `serve` loads)."""
    device: str = "auto"  # cuda, then mps, then cpu
    dtype: str = "auto"  # CPUs: the fastest path measured to keep fp32's answers; elsewhere devices.auto_dtype
    checkpoint: str | None = None  # which checkpoint of a run folder; None: the newest
    offline: bool | None = None  # never download; None: the environment decides (GPT2KIT_OFFLINE=1)
    adapter: str | None = None  # a LoRA adapter (PEFT's format) merged in at load


# The `errors` argument of Python's open(): what to do with bytes that are not valid text.
DECODE_ERRORS = ("strict", "replace", "ignore")


@dataclass(frozen=True)
class EncodeOptions:
    """`encode_dataset`'s options (`gpt2kit encode`)."""
    val_fraction: float = 0.0  # whole documents held out for validation
    eot: bool = True  # <|endoftext|> after every document
    # How files are read: the reader's own defaults.
    encoding: str = ReadOptions.encoding
    errors: str = ReadOptions.errors  # one of DECODE_ERRORS
    column: str | None = ReadOptions.column
    field: str = ReadOptions.field
    progress: bool = True
    template: str | None = None  # "[{subreddit}] {title}": one document per CSV row or JSONL record
    keywords: int = 0  # keywords per document, through the template's {keywords} field; 0 = off

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.errors not in DECODE_ERRORS:
            raise UserError(f"errors must be strict, replace or ignore, got {self.errors!r}")
        if self.keywords < 0:
            raise UserError(f"keywords must be 0 (off) or a number of keywords per document, got {self.keywords}")


# What `convert` writes: safetensors in one of these, read back by gpt2kit and transformers alike.
CONVERT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ConvertOptions:
    """`convert`'s options (`gpt2kit convert`)."""
    checkpoint: str | None = None  # which checkpoint of a run folder; None: the newest
    dtype: str = "float32"  # lossless for every published model; halves are for smaller files


DOWNLOAD_SOURCES = ("openai", "huggingface")  # the published models: OpenAI's TensorFlow files, or the hub's safetensors


@dataclass(frozen=True)
class DownloadOptions:
    """`download`'s options (`gpt2kit download`)."""
    source: str = DOWNLOAD_SOURCES[0]  # for the published names (124M ... 1558M)
    revision: str = "main"  # for hub repositories: a branch, tag or commit


@dataclass(frozen=True)
class ServeOptions:
    """`gpt2kit serve`: where it listens, what it allows, and how the model loads."""
    host: str = "127.0.0.1"  # this machine only; anything else warns without an API key
    port: int = 8000
    api_key: str | None = None  # None: GPT2KIT_API_KEY if set, else no key
    served_name: str | None = None  # the model id clients send; None: the model folder's name (one model only)
    max_batch: int = 16  # rows decoded together (requests join and leave the running batch at every step)
    max_queue: int = 64  # requests waiting before 429
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask
    max_request_rows: int = 64  # n x prompts one request may ask: one client cannot fill the server alone
    max_request_bytes: int = 1 << 20  # larger bodies get 413 before they are parsed
    chat_template: str | None = None  # a Jinja file for /v1/chat/completions; None: assets/chat_template.jinja
    chat_stop: tuple[str, ...] = ("\nUser:", "\nAssistant:", "\nSystem:")  # the next turn's markers end a reply
    # KV-cache positions the running rows may reserve together, each min(n_ctx, prompt + max_tokens);
    # None: max_batch x n_ctx. Requests wait in the queue until their rows fit; a row that never could gets 400.
    max_batch_tokens: int | None = None
    shutdown_timeout: float = 30.0  # seconds SIGTERM gives running requests to finish before they are cancelled
    # The most memory the models may need together (8G, 512M, bytes), checked before any loads: each
    # model's weights plus its KV budget. None: what /proc/meminfo says is available.
    max_memory: str | None = None

    # Not fields (no annotation): the valid ranges. TCP ports are 16 bits; each limit below must be 1 or
    # more (the unit its message names): at 0 every request would be refused (429, 400, 413) or get no tokens.
    PORT_MAX = 65535
    AT_LEAST_ONE = (("max_batch", "row"), ("max_queue", "waiting request"), ("max_tokens_limit", "token"),
                    ("max_request_rows", "row"), ("max_request_bytes", "byte"))

    def __post_init__(self) -> None:
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise UserError(f"max_batch_tokens must be at least 1, got {self.max_batch_tokens}")
        if not 0 <= self.port <= self.PORT_MAX:  # 0 is the system's choice of a free port (serve prints which)
            raise UserError(f"port must be between 1 and {self.PORT_MAX} (or 0: any free port), got {self.port}; "
                            f"pass e.g. --port {ServeOptions.port}")
        for name, unit in self.AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1 {unit}, got {getattr(self, name)}; "
                                f"pass --{name.replace('_', '-')} 1 or more")
        if not self.shutdown_timeout >= 0:
            raise UserError(f"shutdown_timeout must be 0 seconds or more, got {self.shutdown_timeout}")
    # How the model loads; None leaves the choice to `load` (its defaults are its own).
    device: str | None = None
    dtype: str | None = None
    checkpoint: str | None = None
    offline: bool | None = None

    def load_kwargs(self) -> dict:
        """The options meant for `load`, those that were set."""
        return {f.name: v for f in dataclasses.fields(LoadOptions)
                if (v := getattr(self, f.name, None)) is not None}


@dataclass(frozen=True)
class ExportOptions:
    """`export`'s options (`gpt2kit export`)."""
    type: str = "f16"  # GGUF tensor type: f32 | f16 | q8_0 (llama.cpp's converter also defaults to f16)
    int8: bool = False  # ONNX: int8 weights (onnxruntime's weight-only MatMulNBits quantizer)
    checkpoint: str | None = None  # which checkpoint of a run folder; None: the newest
    offline: bool | None = None  # never download a published model
    adapter: str | None = None  # a LoRA adapter (PEFT's format) merged into the weights before export
