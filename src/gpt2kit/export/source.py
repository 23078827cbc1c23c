"""The model an export writes: any checkpoint gpt2kit reads, through the formats boundary, as a plain fp32 GPT.

This is the one place an export gets its weights, so whatever changes them before export (merging a
LoRA adapter into them, say) belongs here and nowhere in the writers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..adapters.lora import merge_into
from ..adapters.peft import read_adapter
from ..formats import build_model, read_checkpoint
from ..hub import resolve_model_path
from ..model import GPT
from ..paths import BUNDLED_DIR
from ..tokenizer import Tokenizer

# Written into every export: a GPT-2's output is machine-made, and whoever publishes it should say so.
SYNTHETIC_NOTICE = "Its output is synthetic text, written by a language model; label it as such when you publish it."
LICENSE = "mit"
LICENSE_NAME = "Modified MIT License (OpenAI GPT-2 weights and vocabulary)"
LICENSE_LINK = "https://github.com/openai/gpt-2/blob/master/LICENSE"


@dataclass
class Source:
    """A model ready to export, with what its metadata says about it."""

    model: GPT  # float32, eval mode
    tokenizer: Tokenizer
    name: str
    origin: str  # where it was read from, in words
    training_run: str  # which run and checkpoint, when the folder tells; else ""


def _training_run(path: Path, checkpoint: str | None) -> str:
    """'run run1, checkpoint step-000500' for a gpt2kit run folder; a summary of training.json when one is there."""
    folder = path if path.is_dir() else path.parent
    parts = []
    if re.fullmatch(r"step-\d+", folder.name):
        parts.append(f"gpt2kit run {folder.parent.name}, checkpoint {folder.name}")
    elif checkpoint:
        parts.append(f"checkpoint {checkpoint}")
    record = folder / "training.json"
    if record.is_file():
        try:
            t = json.loads(record.read_text())
            parts.append(
                f"{t['steps']} steps, {t['tokens_trained']:,} tokens, validation loss {t['val_loss']} "
                f"(perplexity {t['val_ppl']}), {t.get('date', '')}".rstrip(", ")
            )
        except (ValueError, KeyError, TypeError):
            pass  # a hand-edited record only loses its line in the metadata
    return "; ".join(parts)


def load_source(
    model: str | Path | None,
    *,
    checkpoint: str | None = None,
    offline: bool | None = None,
    adapter: str | Path | None = None,
) -> Source:
    """Read `model` (a path, a published name, None for the bundled model) into a plain float32 GPT,
    with a LoRA `adapter` merged into its weights if one is given."""
    path = resolve_model_path(model, offline=offline)
    ck = read_checkpoint(path, checkpoint)
    lora = read_adapter(adapter, ck.config) if adapter is not None else None  # checked before any work
    if lora is not None:
        merge_into(ck.state_dict, lora)
    gpt = build_model(ck.config, ck.state_dict, ck.path, share=True).float().eval()
    ck.state_dict.clear()  # the model owns the tensors now
    name = "gpt2kit-bundled" if path == BUNDLED_DIR else (ck.checkpoint or ck.path.name)
    origin = f"{ck.format} checkpoint {ck.path}"
    return Source(gpt, ck.tokenizer, name, origin, _training_run(ck.path, checkpoint))
