"""LoRA adapters in PEFT's format: what `PeftModel.save_pretrained` writes and `PeftModel.from_pretrained` reads.

    adapter_config.json          peft_type LORA, r, lora_alpha, lora_dropout, target_modules, fan_in_fan_out ...
    adapter_model.safetensors    base_model.model.transformer.h.0.attn.c_attn.lora_A.weight   (r, in)
                                 base_model.model.transformer.h.0.attn.c_attn.lora_B.weight   (out, r)

A and B are nn.Linear weights in PEFT whatever the base layer, so they are (r, in) and (out, r)
here too. `fan_in_fan_out: true` tells PEFT that the base is transformers' Conv1D, whose weight is
(in, out): it transposes B A before merging (peft/tuners/lora/layer.py). The keys are those of
PeftModel(GPT2LMHeadModel): `base_model.model.` + the module's name in GPT2LMHeadModel.

Reading follows PEFT: the scale is lora_alpha / r (alpha / sqrt(r) with use_rslora), alpha_pattern
overrides alpha per module, and r is read from each A's shape (which is what rank_pattern decides).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import GPTConfig
from ..errors import UserError
from ..formats import resolve_run_folder
from .lora import Adapter, LoraWeights, matrix_shape

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_WEIGHTS_FILE = "adapter_model.bin"  # PEFT before safetensors (save_pretrained(safe_serialization=False))
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> GPT2LMHeadModel
# One adapted matrix's tensor, after PEFT_PREFIX; `transformer.` is absent for an adapter on GPT2Model.
KEY = re.compile(
    r"(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])(?:\.default)?\.weight"
)


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def peft_config(adapter: Adapter, base_model: str | None) -> dict:
    """adapter_config.json for a gpt2kit-made adapter (its spec names rank, alpha, dropout, targets)."""
    spec = adapter.spec
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "revision": None,
        "inference_mode": True,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": list(spec.targets),
        "fan_in_fan_out": True,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def write_adapter(folder: Path, adapter: Adapter, *, base_model: str | None) -> None:
    """adapter_config.json + adapter_model.safetensors into `folder` (created), each file written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for path, w in adapter.modules.items():
        tensors[f"{PEFT_PREFIX}transformer.{path}.lora_A.weight"] = w.A.detach().float().cpu().contiguous()
        tensors[f"{PEFT_PREFIX}transformer.{path}.lora_B.weight"] = w.B.detach().float().cpu().contiguous()
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file(tensors, tmp, metadata={"format": "pt", "written_by": "gpt2kit"})
    os.replace(tmp, folder / WEIGHTS_FILE)
    tmp = folder / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(peft_config(adapter, base_model), indent=2) + "\n")
    os.replace(tmp, folder / CONFIG_FILE)


def write_adapter_folder(out: Path, adapter: Adapter, *, base_model: str | None) -> Path:
    """A new adapter folder at `out`, written under a temporary name and renamed when complete."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new folder")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_adapter(tmp, adapter, base_model=base_model)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


def read_config(folder: Path) -> dict:
    """adapter_config.json, checked for what gpt2kit applies: plain LoRA on the blocks' matrices."""
    folder = Path(folder).expanduser()
    path = folder / CONFIG_FILE
    if not path.is_file():
        what = "does not exist" if not folder.exists() else f"has no {CONFIG_FILE}"
        raise UserError(
            f"adapter folder {folder} {what}: pass a folder written by `gpt2kit finetune --lora-rank` "
            f"or PEFT's save_pretrained"
        )
    try:
        cfg = json.loads(path.read_text())
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{path}: peft_type is {cfg.get('peft_type')!r}; gpt2kit applies LoRA adapters only")
    unsupported = [k for k in ("use_dora", "lora_bias", "modules_to_save", "trainable_token_indices") if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        unsupported.append(f"bias={cfg['bias']}")
    if unsupported:
        raise UserError(
            f"{path} uses {', '.join(unsupported)}, which gpt2kit does not apply; merge it with PEFT instead"
        )
    _check_fields(path, cfg)
    return cfg


def _is_number(value) -> bool:
    """A finite JSON number (json reads Infinity and NaN, and bool is an int to Python: neither is a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_rank(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_fields(path: Path, cfg: dict) -> None:
    """The fields reading applies, checked as they are read: a bad one would otherwise surface as a TypeError
    mid-merge, or merge silently into non-finite weights (an alpha of Infinity)."""

    def bad(field: str, value, need: str) -> UserError:
        return UserError(
            f"{path}: {field} is {json.dumps(value)}, but it must be {need}; fix the file or save the adapter again"
        )

    if "r" in cfg and not _is_rank(cfg["r"]):
        raise bad("r", cfg["r"], "a whole number of at least 1 (the rank)")
    if "lora_alpha" in cfg and not _is_number(cfg["lora_alpha"]):
        raise bad("lora_alpha", cfg["lora_alpha"], "a finite number")
    dropout = cfg.get("lora_dropout")
    if dropout is not None and not (_is_number(dropout) and 0 <= dropout < 1):
        raise bad("lora_dropout", dropout, "a number in [0, 1)")
    if cfg.get("use_rslora") is not None and not isinstance(cfg["use_rslora"], bool):
        raise bad("use_rslora", cfg["use_rslora"], "true or false")
    base = cfg.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise bad("base_model_name_or_path", base, "a model's path or name (a string)")
    for field, ok, need in (
        ("alpha_pattern", _is_number, "a finite number"),
        ("rank_pattern", _is_rank, "a whole number of at least 1"),
    ):
        patterns = cfg.get(field) or {}
        if not isinstance(patterns, dict):
            raise bad(field, patterns, "an object of module patterns and values")
        for pattern, value in patterns.items():
            if not ok(value):
                raise bad(f"{field}[{pattern!r}]", value, need)
            try:
                re.compile(pattern)
            except re.error as e:
                raise UserError(
                    f"{path}: {field} has {pattern!r}, which is not a valid pattern ({e}); fix the "
                    f"file or save the adapter again"
                ) from None


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
        path = folder / name
        if not path.is_file():
            continue
        try:
            return load_file(path) if name == WEIGHTS_FILE else torch.load(path, map_location="cpu", weights_only=True)
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
            raise UserError(f"{path} is truncated or corrupted ({str(e).splitlines()[0][:120]})") from None
    raise UserError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}: an incomplete adapter folder")


def _scaling(cfg: dict, layer: int, matrix: str, rank: int) -> float:
    """PEFT's scale for one module: alpha (or its alpha_pattern entry) over r, or over sqrt(r) with rsLoRA."""
    key = f"transformer.h.{layer}.{matrix}"  # the module's name in GPT2LMHeadModel, as PEFT matches it
    alpha = cfg.get("lora_alpha", 8)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            alpha = value
            break
    return alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)


def read_adapter(folder: str | Path, config: GPTConfig) -> Adapter:
    """A PEFT LoRA folder -> Adapter, every tensor's name and shape checked against the base's `config`."""
    folder = resolve_run_folder(Path(folder).expanduser())  # a LoRA run's folder: its newest step
    cfg = read_config(folder)
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in _tensors(folder).items():
        m = KEY.fullmatch(key.removeprefix(PEFT_PREFIX))
        if m is None:
            raise UserError(
                f"{folder}: {key} is not a LoRA matrix of a GPT-2 block; gpt2kit applies adapters "
                f"on attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj only"
            )
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t
    if not pairs:
        raise UserError(f"{folder}/{WEIGHTS_FILE} holds no LoRA weights")
    modules = {}
    for (layer, matrix), ab in sorted(pairs.items()):
        modules[f"h.{layer}.{matrix}"] = _checked(folder, cfg, config, layer, matrix, ab)
    return Adapter(
        modules,
        float(cfg.get("lora_dropout") or 0.0),
        None,
        notes=[f"base_model_name_or_path: {cfg.get('base_model_name_or_path')}"],
    )


def _checked(folder: Path, cfg: dict, config: GPTConfig, layer: int, matrix: str, ab: dict) -> LoraWeights:
    name = f"h.{layer}.{matrix}"
    if set(ab) != {"A", "B"}:
        raise UserError(f"{folder}: {name} has lora_{''.join(ab)} but not both lora_A and lora_B")
    if layer >= config.n_layer:
        raise UserError(
            f"{folder} adapts layer {layer}, but the base has {config.n_layer} layers: "
            f"the adapter was trained on a different base model"
        )
    fan_in, fan_out = matrix_shape(config, matrix)
    A, B = ab["A"], ab["B"]
    r = A.shape[0] if A.dim() == 2 else -1
    if A.dim() != 2 or B.dim() != 2 or r < 1 or tuple(A.shape) != (r, fan_in) or tuple(B.shape) != (fan_out, r):
        raise UserError(
            f"{folder}: {name} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}; this base needs "
            f"(r, {fan_in}) and ({fan_out}, r): the adapter was trained on a different base model"
        )
    A, B = A.float(), B.float()
    if not (torch.isfinite(A).all() and torch.isfinite(B).all()):  # merged, it would make the model's weights NaN
        raise UserError(
            f"{folder}: {name} holds non-finite values (NaN or infinity); the adapter is broken: "
            f"save it again from a run whose loss stayed finite"
        )
    return LoraWeights(A, B, _scaling(cfg, layer, matrix, r))


def adapter_base(folder: Path, checkpoint: str | None = None) -> tuple[Path, str] | None:
    """(adapter folder, its base model) when `folder` (or its run's newest step) is an adapter without
    model weights, as a LoRA fine-tuning run's step folders are; else None."""
    step = resolve_run_folder(Path(folder), checkpoint)
    if not is_adapter_folder(step) or any((step / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        return None
    base = read_config(step).get("base_model_name_or_path")
    if not base:
        raise UserError(
            f"{step} is a LoRA adapter that names no base model; pass the base with --model "
            f"and the adapter with --adapter"
        )
    return step, str(base)
