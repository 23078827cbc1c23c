"""Several models in one server: their ids, the memory they need, and one engine each.

`gpt2kit serve --model A --model B` gives every model its own Engine (its own worker thread, model,
KV cache, scheduler, counters and job numbering), so nothing mutable is shared: a request to one model
never waits in another's batch, and a seed gives the same text whichever other models are served.

Memory is checked before anything loads: each model's expected bytes (its weights at the dtype it
runs in, plus the KV cache its engine may reserve, --max-batch-tokens or max-batch x context) against
--max-memory, else what the kernel says is available (/proc/meminfo MemAvailable). Models that do not
fit are refused with one line, rather than found out by the OOM killer halfway through loading.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..config import GPTConfig
from ..errors import UserError
from ..options import DTYPE_NAMES, ServeOptions
from .completions import APIError
from .engine import Engine
from .metrics import ModelMetrics

BUNDLED_ID = "gpt2kit-bundled"
UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}  # binary, as free(1) and ulimit count
# 2 bytes a weight off the CPU (on CPUs weights load as float32 first, and --dtype auto may keep them so)
HALF_DTYPES = tuple(name for name, canonical in DTYPE_NAMES.items() if canonical != "float32")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")  # what the on-disk estimate counts


@dataclass(frozen=True)
class ModelSpec:
    """One --model: the id clients send and what to load (a folder, a published name or OWNER/NAME[@REV])."""

    id: str
    source: str | None  # None: the bundled model


def parse_specs(models: Sequence[str | Path | None], served_name: str | None = None) -> list[ModelSpec]:
    """--model values -> specs. `ID=SOURCE` names a model's id; otherwise the id is the folder's (or
    repository's) last part, as a single model's has always been. Ids must differ."""
    models = list(models) or [None]
    if served_name and len(models) > 1:
        raise UserError("--served-name names a single model; with several, name each as --model ID=PATH")
    specs = []
    for raw in models:
        id_, text = split_id(None if raw is None else str(raw))
        if id_ == "" or text == "":
            raise UserError(f"--model {raw!r}: write ID=PATH, both parts non-empty")
        id_ = id_ or (os.path.basename(os.path.normpath(text)) if text else BUNDLED_ID)
        specs.append(ModelSpec(served_name or id_, text))
    ids = [s.id for s in specs]
    if len(set(ids)) < len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise UserError(f"two models would both be called {', '.join(twice)}; name them apart with --model ID=PATH")
    return specs


def split_id(text: str | None) -> tuple[str | None, str | None]:
    """'ID=SOURCE' -> (ID, SOURCE); anything else (no '=', or a path that exists with one) -> (None, text)."""
    if text and "=" in text and not Path(text).expanduser().exists():
        id_, _, source = text.partition("=")
        return id_, source
    return None, text


# --- memory -----------------------------------------------------------------------------------------


def parse_bytes(text: str) -> int:
    """'8G', '512M', '1.5G', '1000000' -> bytes (binary units)."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in UNITS else ""
    try:
        value = float(number[:-1] if unit else number) * UNITS[unit]
    except ValueError:
        raise UserError(f"--max-memory {text!r} is not a size; write e.g. 8G, 512M or a number of bytes") from None
    if value <= 0:
        raise UserError(f"--max-memory must be positive, got {text!r}")
    return int(value)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo: what can be allocated without swapping (None off Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _config_of(folder: Path, checkpoint: str | None) -> GPTConfig | None:
    """The model's shape from its config file alone, without reading the weights (None: the format has none)."""
    from ..formats import read_hf_config, read_hparams, resolve_run_folder

    if not folder.is_dir():
        return None  # a single file (GGUF): its size says
    folder = resolve_run_folder(folder, checkpoint)
    if (folder / "config.json").is_file():
        return read_hf_config(folder / "config.json")  # a damaged file: one line naming it, before any load
    if (folder / "hparams.json").is_file():
        return read_hparams(folder / "hparams.json")
    return None


def weight_bytes(config: GPTConfig, element_size: int) -> int:
    from ..model import GPT

    return GPT.num_params(_Shape(config)) * element_size


@dataclass
class _Shape:
    config: GPTConfig  # GPT.num_params reads only the config


def kv_bytes(config: GPTConfig, positions: int, element_size: int) -> int:
    """The KV cache of `positions` positions: keys and values of every layer (n_head x head size = n_embd)."""
    return positions * config.n_layer * 2 * config.n_embd * element_size


def expected_bytes(folder: Path, options: ServeOptions) -> int:
    """What serving the model in `folder` will take: weights plus its KV budget. A format without a
    config file (GGUF, a TF run without hparams.json) counts its weight files' size on disk: a lower
    bound (quantized GGUF weights load as float32, and the KV budget is left out)."""
    from ..adapters.peft import adapter_base
    from ..hub import resolve_model_path

    element = 2 if (options.dtype or "").lower() in HALF_DTYPES and (options.device or "cpu") != "cpu" else 4
    checkpoint = options.checkpoint
    if folder.is_dir() and (found := adapter_base(folder, checkpoint)) is not None:
        # a LoRA run: its base model, as `load` reads it (the adapter's own matrices are small)
        folder, checkpoint = resolve_model_path(found[1], offline=options.offline), None
    config = _config_of(folder, checkpoint)
    if config is not None:
        positions = options.max_batch_tokens or options.max_batch * config.n_ctx  # what Engine.budget() will say
        return weight_bytes(config, element) + kv_bytes(config, positions, element)
    files = [folder] if folder.is_file() else folder.rglob("*")
    return sum(f.stat().st_size for f in files if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or ".data-" in f.name))


def memory_limit(options: ServeOptions) -> int | None:
    """--max-memory in bytes, else the memory available (None: unknown, no check)."""
    return parse_bytes(options.max_memory) if options.max_memory else available_bytes()


def check_fit(needs: dict[str, int], limit: int | None, options: ServeOptions) -> None:
    """Refuse, before loading anything, models whose expected memory is over the limit."""
    total = sum(needs.values())
    if limit is None or total <= limit:
        return
    each = ", ".join(f"{name} {_mib(n)}" for name, n in needs.items())
    where = "--max-memory" if options.max_memory else "available memory (MemAvailable)"
    raise UserError(
        f"the models need about {_mib(total)} ({each}) but the {where} is {_mib(limit)}; serve fewer "
        f"models, a smaller --max-batch or --max-batch-tokens, or raise --max-memory"
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


# --- the served models --------------------------------------------------------------------------------


@dataclass
class ServedModel:
    """One model: its engine, its own metrics, and what it was expected to take."""

    id: str
    engine: Engine
    expected_bytes: int
    metrics: ModelMetrics = field(default_factory=ModelMetrics)
    created: int = field(default_factory=lambda: int(time.time()))

    def memory(self) -> dict:
        """Bytes of the loaded model's tensors (parameters and buffers) and of its KV budget."""
        lm = self.engine.lm
        if lm is None:
            return {"expected_bytes": self.expected_bytes, "weights_bytes": None, "kv_budget_bytes": None}
        tensors = {id(t): t.numel() * t.element_size() for t in [*lm.model.parameters(), *lm.model.buffers()]}
        kv = kv_bytes(lm.config, self.engine.budget(), lm.model.cache_dtype.itemsize)
        return {"expected_bytes": self.expected_bytes, "weights_bytes": sum(tensors.values()), "kv_budget_bytes": kv}


class Models:
    """id -> ServedModel, in the order given; the first answers requests that name no model."""

    def __init__(self, served: Sequence[ServedModel]):
        self.by_id = {m.id: m for m in served}
        self.first = served[0]

    def __iter__(self):
        return iter(self.by_id.values())

    def __len__(self) -> int:
        return len(self.by_id)

    def pick(self, name: str | None) -> ServedModel:
        """The model a request names (none: the first), or 404 in OpenAI's shape naming those served."""
        if name is None:
            return self.first
        if name not in self.by_id:
            served = ", ".join(f"`{i}`" for i in self.by_id)
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves {served}",
                param="model",
                code="model_not_found",
            )
        return self.by_id[name]

    @property
    def load_exception(self) -> BaseException | None:
        return next((m.engine.load_exception for m in self if m.engine.load_exception is not None), None)

    def drain(self, timeout: float) -> None:
        for m in self:
            m.engine.drain(timeout)


def start_engines(
    specs: Sequence[ModelSpec],
    folders: Sequence[Path],
    needs: Sequence[int],
    options: ServeOptions,
    on_load_error: Callable[[BaseException], None],
) -> Models:
    """One Engine per model, each loading in its own worker thread (they load side by side)."""
    from ..lm import load

    def loader(folder: Path):
        return lambda: load(folder, **options.load_kwargs())

    return Models(
        [
            ServedModel(
                spec.id,
                Engine(
                    loader(folder),
                    max_batch=options.max_batch,
                    max_queue=options.max_queue,
                    max_batch_tokens=options.max_batch_tokens,
                    on_load_error=on_load_error,
                ),
                need,
            )
            for spec, folder, need in zip(specs, folders, needs)
        ]
    )
