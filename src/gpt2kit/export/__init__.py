"""Take a gpt2kit model to other runtimes: GGUF for llama.cpp (and Ollama, LM Studio), ONNX for onnxruntime.

    export("checkpoint/run1", "model.gguf", type="q8_0")

The output's suffix picks the format. Every option is checked, and the output's folder too, before the
model is read: a mistake costs no time.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from ..options import ExportOptions

SUFFIXES = (".gguf",)


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in SUFFIXES:
        raise UserError(f"{out}: the output's suffix picks the format; name it *.gguf (llama.cpp, Ollama)")
    if out.is_dir():
        raise UserError(f"{out} is a folder; give the path of the file to write")
    folder = out.parent
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist; create it first or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {folder} (permission denied); choose another output path")


def export(model: str | Path | None, out: str | Path, *, type: str = ExportOptions.type,
           checkpoint: str | None = ExportOptions.checkpoint, offline: bool | None = ExportOptions.offline) -> Path:
    """Write `model` (a folder or file in any format gpt2kit reads, a published name, None: the bundled one) to `out`.

    `.gguf`: llama.cpp's gpt2 architecture, tensors in `type` (f32, f16 or q8_0) with the whole vocabulary.
    Defaults: gpt2kit.options.ExportOptions.
    """
    from .gguf import check_type, write_gguf
    out = Path(out).expanduser()
    _check_out(out)
    check_type(type)
    from .source import load_source
    source = load_source(model, checkpoint=checkpoint, offline=offline)
    return write_gguf(source, out, type=type)


__all__ = ["export"]
