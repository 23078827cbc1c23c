"""`merge`: a base model plus a LoRA adapter, written as one plain model folder (W += scaling * B A)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UserError
from ..formats import build_model, read_checkpoint, save_hf, write_vocab
from ..hub import resolve_model_path
from .lora import merge_into
from .peft import read_adapter


def merge(base: str | Path, adapter: str | Path, out: str | Path, *, checkpoint: str | None = None) -> Path:
    """Write `out` (a new folder: config.json, model.safetensors, vocabulary) = `base` with `adapter` merged in.

    The folder is written under a temporary name and renamed when complete, so it is whole or absent.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new folder")
    ck = read_checkpoint(resolve_model_path(str(base)), checkpoint)
    lora = read_adapter(adapter, ck.config)  # checked against the base's shapes before any work
    model = build_model(ck.config, ck.state_dict, ck.path, share=True)
    state = model.state_dict()
    merge_into(state, lora)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_hf(tmp, ck.config, state)
    write_vocab(tmp, ck.tokenizer)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out
