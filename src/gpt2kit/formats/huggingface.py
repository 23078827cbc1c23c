"""Hugging Face folders (GPT2LMHeadModel.save_pretrained), which are also gpt2kit's own layout.

config.json with model.safetensors, sharded safetensors with model.safetensors.index.json, or
pytorch_model.bin. HF's GPT-2 uses Conv1D with weights (in, out); ours are nn.Linear (out, in).

Nothing is copied: safetensors maps the file and hands out views of it, pytorch_model.bin is opened with
torch.load(mmap=True), and the Conv1D weights become transposed views. Whoever converts them to their
final form (gpt2kit.cpu, a contiguous copy) releases the source pages as it goes (mapped.py), so a load
holds about one copy of the model, in its final dtype. Only checkpoints stored in fp16/bf16 are widened to
fp32 here, which copies (once: the Conv1D weights straight into (out, in) order).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .. import durable
from ..config import GPTConfig, MalformedConfig
from ..errors import UserError

# What to do about a damaged config file (formats' loaders end their one line with it).
RESTORE = (
    "restore it from where the model came from (download it again, or `gpt2kit convert` the original "
    "checkpoint into a new folder)"
)

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SKIPPED = ("lm_head.weight", ".attn.bias", ".attn.masked_bias")  # tied head; causal-mask buffers


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _weight_files(folder: Path) -> list[Path]:
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise UserError(f"{index} is not a valid weight index ({e})") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise UserError(f"{folder} lacks the shard(s) {', '.join(missing)} named by {index_name}")
            return [folder / s for s in shards]
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    raise UserError(f"{folder} has config.json but no model.safetensors, sharded safetensors or pytorch_model.bin")


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as f:  # views of safetensors' own mmap of the file
                return {k: f.get_tensor(k) for k in f.keys()}
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(
                path, map_location="cpu", weights_only=True
            )  # the legacy (pre-1.6) format cannot be mapped
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise UserError(
            f"{path} is truncated or corrupted ({str(e).splitlines()[0][:120]}); download or copy it again"
        ) from None


def read_hf_config(path: Path) -> GPTConfig:
    """config.json -> GPTConfig, or one line that names the file, what is wrong and what to do."""
    return config_from_json(path, GPTConfig.from_hf_config)


def config_from_json(path: Path, parse: Callable[[Any], GPTConfig], *, restore_unsupported: bool = False) -> GPTConfig:
    """A JSON config file (config.json, hparams.json) read and handed to `parse`; whatever is wrong with it,
    one line naming the file. A well-formed config of a model gpt2kit does not compute keeps its own words
    (with the advice to restore it where a wrong value can only mean damage: `restore_unsupported`)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not text, so not a {path.name}; {RESTORE}") from None
    except ValueError as e:  # json.JSONDecodeError
        raise UserError(f"{path} is not valid JSON ({e}); {RESTORE}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; make it readable (chmod +r)") from None
    try:
        return parse(raw)
    except MalformedConfig as e:
        raise UserError(f"{path} is damaged: {e}; {RESTORE}") from None
    except UserError as e:
        raise UserError(f"{path}: {e}" + (f"; {RESTORE}" if restore_unsupported else "")) from None


def load_hf(folder: Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    config = read_hf_config(folder / "config.json")
    sd: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        for key, t in _read(path).items():
            if any(key.endswith(s) for s in SKIPPED):
                continue
            key = key.removeprefix("transformer.")
            if key.endswith(TRANSPOSED) and t.dim() == 2:  # another rank fails build_model's shape check
                t = t.t()  # (out, in) view of the stored (in, out)
            sd[key] = _fp32(t)
    _check_sizes(folder / "config.json", config, sd)
    return config, sd


def _check_sizes(path: Path, config: GPTConfig, sd: dict[str, torch.Tensor]) -> None:
    """The sizes config.json gives against the tensors', before a model of those sizes is built (a damaged
    n_layer=1000000000 would otherwise build a billion blocks before build_model's shape check)."""
    if "wte.weight" not in sd or "wpe.weight" not in sd:
        return  # build_model names the missing tensors
    layers = {k.split(".")[1] for k in sd if k.startswith("h.")}
    found = {
        "vocab_size": sd["wte.weight"].shape[0],
        "n_embd": sd["wte.weight"].shape[-1],
        "n_positions": sd["wpe.weight"].shape[0],
        "n_layer": len(layers),
    }
    said = {
        "vocab_size": config.n_vocab,
        "n_embd": config.n_embd,
        "n_positions": config.n_ctx,
        "n_layer": config.n_layer,
    }
    wrong = [f"{k}={said[k]} but the weights have {v}" for k, v in found.items() if said[k] != v]
    if wrong:
        raise UserError(f"{path} does not match the weights beside it ({', '.join(wrong)}); {RESTORE}")


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """t as fp32: itself when it is fp32 already (a view of the mapped file), else one widened copy,
    contiguous in t's shape, so a transposed fp16 matrix is not copied a second time into (out, in) order."""
    if t.dtype == torch.float32:
        return t
    return torch.empty(t.shape, dtype=torch.float32).copy_(t)


def _readable_by_umask(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_hf(
    folder: Path, config: GPTConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None = None
) -> None:
    """Write config.json + model.safetensors that transformers' GPT2LMHeadModel opens as they are."""
    out = {}
    for key, t in state_dict.items():
        t = t.detach().to("cpu")
        if dtype is not None:
            t = t.to(dtype)
        if key.endswith(TRANSPOSED):
            t = t.t()
        out["transformer." + key] = t.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.safetensors.tmp"
    save_file(out, tmp, metadata={"format": "pt", "written_by": "gpt2kit"})
    _readable_by_umask(tmp)  # safetensors writes 0600; a model folder is meant to be shared like any file
    durable.replace(tmp, folder / "model.safetensors")
    cfg = config.to_hf_config()
    if dtype is not None:
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    durable.write_text(folder / "config.json", json.dumps(cfg, indent=2) + "\n")
