"""The options of each adapter-facing operation, one frozen dataclass each: the one home of their defaults.

The CLI builds its flags' help from these classes and the server its request defaults, so a default is
written once. (Fine-tuning's options are `training/options.py`'s `TrainOptions`.) This module imports
nothing heavy: `gpt2kit --help` reads it without loading PyTorch.
"""

from __future__ import annotations

import dataclasses
import math
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
    # The samplers of gpt2kit.samplers (issue 29), under vLLM's and llama.cpp's server names; each default is off.
    min_p: float = 0.0  # keep tokens at least min_p x the likeliest one's probability
    typical_p: float = 1.0  # Meister et al.'s locally typical mass
    epsilon_cutoff: float = 0.0  # Hewitt et al.'s epsilon-sampling: drop tokens below this probability
    eta_cutoff: float = 0.0  # Hewitt et al.'s eta-sampling: the epsilon that the row's entropy scales down
    top_n_sigma: float = 0.0  # keep logits within n standard deviations of the largest; 0 or less = off
    mirostat: int = 0  # 2 = mirostat v2 (in place of top-k, top-p and the other truncations); 0 = off
    mirostat_tau: float = 5.0  # the target surprise, in bits per token
    mirostat_eta: float = 0.1  # how fast mu follows the observed surprise
    dry_multiplier: float = 0.0  # DRY's penalty scale
    dry_base: float = 1.75  # the penalty grows by this factor per repeated token beyond dry_allowed_length
    dry_allowed_length: int = 2  # repeats this long go unpenalised
    dry_penalty_last_n: int = -1  # tokens DRY looks back over; -1 = all of the row's tokens
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")  # a repeat never runs across these
    xtc_threshold: float = 0.1  # XTC: tokens at least this likely are the "top choices"; above 0.5 = off
    xtc_probability: float = 0.0  # the chance that XTC removes all top choices but the least likely
    penalty_alpha: float = 0.0  # contrastive search's degeneration penalty (with top_k candidates)
    # Kirchenbauer et al.'s watermark, seeded as transformers' "lefthash" (provenance/watermark.py); None = off
    watermark_key: int | None = None  # the hashing key (transformers' own default: 15485863)
    watermark_gamma: float = 0.25  # the green list's share of the vocabulary (transformers' greenlist_ratio)
    watermark_delta: float = 2.0  # added to the green tokens' logits (transformers' bias)
    watermark_context_width: int = 1  # tokens a row holds before its first marked one (transformers' context_width)

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
            raise UserError(
                f"repetition_penalty must be between {PENALTY_RANGE[0]:g} and {PENALTY_RANGE[1]:g} "
                f"(1.0 = off), got {self.repetition_penalty}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise UserError(f"{name} must be between -2 and 2, got {getattr(self, name)}")
        for token, bias in self.logit_bias:
            if token < 0 or not -100 <= bias <= 100:
                raise UserError(f"logit_bias maps token ids (0 or more) to biases in [-100, 100], got {token}: {bias}")
        self._check_samplers()
        check_watermark(self.watermark_key, self.watermark_gamma, self.watermark_delta, self.watermark_context_width)

    # Not fields (no annotation): the samplers' ranges, (low, high, what an out-of-range message adds).
    UNIT_RANGES = (
        ("min_p", 0.0, 1.0, "0 = off"),
        ("typical_p", 0.0, 1.0, "1 = off"),
        ("mirostat_eta", 0.0, 1.0, ""),
        ("xtc_probability", 0.0, 1.0, "0 = off"),
        ("xtc_threshold", 0.0, 1.0, "above 0.5 = off"),
        ("penalty_alpha", 0.0, 1.0, "0 = off"),
    )
    DRY_BREAKER_MAX = 40  # characters; llama.cpp cuts longer breakers to 40 (llama_sampler_init_dry)

    def _check_samplers(self) -> None:
        breakers = self.dry_sequence_breakers
        if isinstance(breakers, str) or not all(isinstance(b, str) for b in breakers):
            raise UserError(f"dry_sequence_breakers must be a list of texts, got {breakers!r}")
        object.__setattr__(self, "dry_sequence_breakers", tuple(breakers))  # a JSON list: hashable, as settings are
        for name, low, high, note in self.UNIT_RANGES:
            if not low <= getattr(self, name) <= high:
                raise UserError(
                    f"{name} must be between {low:g} and {high:g}{f' ({note})' if note else ''}, "
                    f"got {getattr(self, name)}"
                )
        for name in ("epsilon_cutoff", "eta_cutoff"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name} must be in [0, 1) (0 = off), got {getattr(self, name)}")
        if not math.isfinite(self.top_n_sigma):
            raise UserError(
                f"top_n_sigma must be a finite number of standard deviations (0 or less = off), got {self.top_n_sigma}"
            )
        if self.mirostat not in (0, 2):
            raise UserError(f"mirostat must be 0 (off) or 2 (mirostat v2; v1 is not offered), got {self.mirostat}")
        if not 0 <= self.mirostat_tau <= 100:  # bits: GPT-2's whole vocabulary is 15.6 bits
            raise UserError(f"mirostat_tau must be between 0 and 100 bits, got {self.mirostat_tau}")
        if not 0 <= self.dry_multiplier < math.inf:
            raise UserError(f"dry_multiplier must be 0 (off) or more, got {self.dry_multiplier}")
        if not 1 <= self.dry_base < math.inf:
            raise UserError(f"dry_base must be 1 or more, got {self.dry_base}")
        if self.dry_allowed_length < 0:
            raise UserError(f"dry_allowed_length must be 0 or more tokens, got {self.dry_allowed_length}")
        if self.dry_penalty_last_n < -1:
            raise UserError(
                f"dry_penalty_last_n must be -1 (every token), 0 (off) or a number of tokens, "
                f"got {self.dry_penalty_last_n}"
            )
        for breaker in self.dry_sequence_breakers:
            if not 1 <= len(breaker) <= self.DRY_BREAKER_MAX:
                raise UserError(
                    f"dry_sequence_breakers must be texts of 1 to {self.DRY_BREAKER_MAX} characters, got {breaker!r}"
                )
        if self.penalty_alpha > 0 and self.top_k < 2:
            raise UserError(
                f"penalty_alpha (contrastive search) compares top_k candidates: top_k must be 2 or more, "
                f"got {self.top_k}"
            )


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
    min_p: float = SamplingSettings.min_p
    typical_p: float = SamplingSettings.typical_p
    epsilon_cutoff: float = SamplingSettings.epsilon_cutoff
    eta_cutoff: float = SamplingSettings.eta_cutoff
    top_n_sigma: float = SamplingSettings.top_n_sigma
    mirostat: int = SamplingSettings.mirostat
    mirostat_tau: float = SamplingSettings.mirostat_tau
    mirostat_eta: float = SamplingSettings.mirostat_eta
    dry_multiplier: float = SamplingSettings.dry_multiplier
    dry_base: float = SamplingSettings.dry_base
    dry_allowed_length: int = SamplingSettings.dry_allowed_length
    dry_penalty_last_n: int = SamplingSettings.dry_penalty_last_n
    dry_sequence_breakers: tuple[str, ...] = SamplingSettings.dry_sequence_breakers
    xtc_threshold: float = SamplingSettings.xtc_threshold
    xtc_probability: float = SamplingSettings.xtc_probability
    penalty_alpha: float = SamplingSettings.penalty_alpha
    # Structured output (gpt2kit.constraints), at most one at a time; the defaults leave the text free.
    json_schema: str | None = None  # a JSON Schema as JSON text (a dict is taken too, and kept as its JSON)
    json_object: bool = False  # any JSON object
    regex: str | None = None  # the whole continuation matches it (Rust regex syntax)
    grammar: str | None = None  # Lark (llguidance's variant) or llama.cpp's GBNF
    choices: tuple[str, ...] = ()  # exactly one of these texts
    watermark_key: int | None = SamplingSettings.watermark_key
    watermark_gamma: float = SamplingSettings.watermark_gamma
    watermark_delta: float = SamplingSettings.watermark_delta
    watermark_context_width: int = SamplingSettings.watermark_context_width
    stop: tuple[str, ...] = ()  # stop strings, dropped from the text
    seed: int | None = None  # None: a fresh random seed per call
    nsamples: int = 1  # samples per prompt (the CLI's 0: until interrupted)
    batch_size: int = 1
    truncate: str | None = None  # gpt-2-simple: cut each sample at this text
    include_prefix: bool = True  # the prompt before its continuation
    stop_at_eot: bool = True
    logprobs: int = 0  # top alternatives recorded per step

    # Not fields: the samplers of gpt2kit.samplers (issue 29), the fields its HELP describes, and the constraint forms.
    SAMPLERS = (
        "min_p",
        "typical_p",
        "epsilon_cutoff",
        "eta_cutoff",
        "top_n_sigma",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "dry_multiplier",
        "dry_base",
        "dry_allowed_length",
        "dry_penalty_last_n",
        "dry_sequence_breakers",
        "xtc_threshold",
        "xtc_probability",
        "penalty_alpha",
    )
    CONSTRAINTS = ("json_schema", "json_object", "regex", "grammar", "choices")

    def __post_init__(self) -> None:
        # Frozen: the two forms people pass from Python (a dict schema, a list of choices) normalised once, here.
        if isinstance(self.json_schema, dict):
            object.__setattr__(self, "json_schema", Constraint.json_schema(self.json_schema).source)
        if isinstance(self.choices, str):
            raise UserError(f"choices must be a list of texts, got the text {self.choices!r}")
        object.__setattr__(self, "choices", tuple(self.choices or ()))

    def constraint(self) -> Constraint | None:
        """The one constraint these options ask for, or None; a UserError when more than one is set."""
        asked = [name for name in self.CONSTRAINTS if getattr(self, name) not in (None, False, ())]
        if len(asked) > 1:
            raise UserError(f"one constraint at a time: got {' and '.join(asked)}")
        if not asked:
            return None
        build = {
            "json_schema": Constraint.json_schema,
            "json_object": lambda _: Constraint.json_object(),
            "regex": Constraint.regex,
            "grammar": Constraint.grammar,
            "choices": Constraint.choice,
        }
        return build[asked[0]](getattr(self, asked[0]))

    def sampling(self) -> SamplingSettings:
        """The per-row filters these options ask for (their ranges checked: a UserError when one is out)."""
        return SamplingSettings(
            constraint=self.constraint(),
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(SamplingSettings)
                if f.name != "constraint" and hasattr(self, f.name)
            },
        )


# PyTorch compute dtypes by the names people type (the short ones are llama.cpp's and PyTorch users' habit),
# each with the torch dtype it names. devices.py maps them to torch; this torch-free module holds the names.
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
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


DOWNLOAD_SOURCES = (
    "openai",
    "huggingface",
)  # the published models: OpenAI's TensorFlow files, or the hub's safetensors


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
    AT_LEAST_ONE = (
        ("max_batch", "row"),
        ("max_queue", "waiting request"),
        ("max_tokens_limit", "token"),
        ("max_request_rows", "row"),
        ("max_request_bytes", "byte"),
    )

    def __post_init__(self) -> None:
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise UserError(f"max_batch_tokens must be at least 1, got {self.max_batch_tokens}")
        if not 0 <= self.port <= self.PORT_MAX:  # 0 is the system's choice of a free port (serve prints which)
            raise UserError(
                f"port must be between 1 and {self.PORT_MAX} (or 0: any free port), got {self.port}; "
                f"pass e.g. --port {ServeOptions.port}"
            )
        for name, unit in self.AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise UserError(
                    f"{name} must be at least 1 {unit}, got {getattr(self, name)}; "
                    f"pass --{name.replace('_', '-')} 1 or more"
                )
        if not self.shutdown_timeout >= 0:
            raise UserError(f"shutdown_timeout must be 0 seconds or more, got {self.shutdown_timeout}")

    # How the model loads; None leaves the choice to `load` (its defaults are its own).
    device: str | None = None
    dtype: str | None = None
    checkpoint: str | None = None
    offline: bool | None = None

    def load_kwargs(self) -> dict:
        """The options meant for `load`, those that were set."""
        return {f.name: v for f in dataclasses.fields(LoadOptions) if (v := getattr(self, f.name, None)) is not None}


@dataclass(frozen=True)
class ExportOptions:
    """`export`'s options (`gpt2kit export`)."""

    type: str = "f16"  # GGUF tensor type: f32 | f16 | q8_0 (llama.cpp's converter also defaults to f16)
    int8: bool = False  # ONNX: int8 weights (onnxruntime's weight-only MatMulNBits quantizer)
    checkpoint: str | None = None  # which checkpoint of a run folder; None: the newest
    offline: bool | None = None  # never download a published model
    adapter: str | None = None  # a LoRA adapter (PEFT's format) merged into the weights before export


# --- provenance (issue 31): the watermark's ranges, `inspect` and `detect` -----------------------------

WATERMARK_KEY_MAX = 2**64 - 2  # transformers seeds with key * token % (2**64 - 1): larger keys repeat smaller ones
WATERMARK_DELTA_MAX = 100.0  # as logit_bias: on raw logits +100 already makes a token all but certain


def check_watermark(key: int | None, gamma: float, delta: float, context_width: int) -> None:
    """The watermark settings' one rule (generation and detection): a UserError naming the first one out of range."""
    if key is not None and not 1 <= key <= WATERMARK_KEY_MAX:
        raise UserError(f"watermark_key must be a whole number from 1 to {WATERMARK_KEY_MAX}, got {key}")
    if not 0 < gamma < 1:
        raise UserError(f"watermark_gamma (the green list's share of the vocabulary) must be in (0, 1), got {gamma}")
    if not 0 < delta <= WATERMARK_DELTA_MAX:
        raise UserError(f"watermark_delta must be in (0, {WATERMARK_DELTA_MAX:g}], got {delta}")
    if context_width < 1:
        raise UserError(f"watermark_context_width must be at least 1 token, got {context_width}")


@dataclass(frozen=True)
class InspectOptions:
    """`inspect`'s options (`gpt2kit inspect`, `LM.inspect`, POST /v1/inspect)."""

    context_length: int | None = None  # tokens of context per window; None or 0: the model's context
    alternatives: int = 10  # the model's top predictions listed with each token

    ALTERNATIVES_MAX = 100  # not a field: beyond this a long text's JSON is mostly alternatives

    def __post_init__(self) -> None:
        if self.context_length is not None and self.context_length < 0:
            raise UserError(
                f"context_length must be a number of tokens (0: the model's context), got {self.context_length}"
            )
        if not 0 <= self.alternatives <= self.ALTERNATIVES_MAX:
            raise UserError(f"alternatives must be between 0 and {self.ALTERNATIVES_MAX}, got {self.alternatives}")


@dataclass(frozen=True)
class DetectOptions:
    """`detect`'s options (`gpt2kit detect`): the generation's watermark settings, and the verdict's threshold."""

    watermark_key: int | None = None  # required: the key the text was generated with
    watermark_gamma: float = SamplingSettings.watermark_gamma
    watermark_context_width: int = SamplingSettings.watermark_context_width
    # Kirchenbauer et al.'s threshold: an unmarked text passes it about 3 times in 100,000 (one-sided p 3.2e-5).
    z_threshold: float = 4.0
    # transformers' option: each distinct (context, token) n-gram counts once, so a text that loops (and
    # repeats the same green or red pairs) is not scored on its repeats.
    ignore_repeated_ngrams: bool = False

    def __post_init__(self) -> None:
        if self.watermark_key is None:
            raise UserError("detection needs the watermark key the text was generated with (--watermark-key K)")
        check_watermark(
            self.watermark_key, self.watermark_gamma, SamplingSettings.watermark_delta, self.watermark_context_width
        )
        if not math.isfinite(self.z_threshold):
            raise UserError(f"z_threshold must be a finite number, got {self.z_threshold}")
