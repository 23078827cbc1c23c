"""`merge`: a base model plus a LoRA adapter, written as one plain model folder (W += scaling * B A)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import durable
from ..formats import build_model, read_checkpoint, save_hf, write_vocab
from ..hub import resolve_model_path
from .lora import merge_into
from .peft import read_adapter


def merge(base: str | Path, adapter: str | Path, out: str | Path, *, checkpoint: str | None = None) -> Path:
    """Write `out` (a new folder: config.json, model.safetensors, vocabulary) = `base` with `adapter` merged in.

    The folder is written under a temporary name and renamed when complete, so it is whole or absent.
    """
    out = durable.check_output(out, folder=True, make_parents=True)  # before the base loads
    ck = read_checkpoint(resolve_model_path(str(base)), checkpoint)
    lora = read_adapter(adapter, ck.config)  # checked against the base's shapes before any work
    model = build_model(ck.config, ck.state_dict, ck.path, share=True)
    state = model.state_dict()
    merge_into(state, lora)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = durable.temp_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_hf(tmp, ck.config, state)
        write_vocab(tmp, ck.tokenizer)
        if out.exists():
            out.rmdir()  # checked empty before any work
        durable.replace(tmp, out)  # fsync'd files, then the rename
    except OSError as e:
        raise durable.user_error_for(e, out) or e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
