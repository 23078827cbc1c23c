"""Take a gpt2kit model to other runtimes: GGUF for llama.cpp (and Ollama, LM Studio), ONNX for onnxruntime.

    export("checkpoint/run1", "model.gguf", type="q8_0")
    export("checkpoint/run1", "model.onnx", int8=True)
    export("checkpoint/run1", "gpt2-genai")           # a folder onnxruntime-genai runs as it is

The output's suffix picks the format (no suffix: a new folder). Every option is checked, and the output's
folder too, before the model is read: a mistake costs no time. An existing output file is refused, as an
existing folder that is not empty is: an export never replaces what the user had.
"""

from __future__ import annotations

from pathlib import Path

from .. import durable
from ..errors import UserError
from ..options import ExportOptions

SUFFIXES = (".gguf", ".onnx")


def _check_out(out: Path) -> None:
    if out.suffix and out.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"{out}: the output's suffix picks the format; name it *.gguf (llama.cpp, Ollama), *.onnx "
            f"(onnxruntime), or a folder without a suffix (an ONNX folder for onnxruntime-genai)"
        )
    if out.suffix and out.is_dir():
        raise UserError(f"{out} is a folder; give the path of the file to write")
    # An existing file is refused as an existing folder is: an export never replaces what the user had.
    durable.check_output(out, folder=not out.suffix)
    if out.suffix.lower() == ".onnx":  # a big model's weights go to OUT.onnx.data: that is not replaced either
        durable.check_output(out.with_name(out.name + ".data"), folder=False)


def _check_installed(modules: list[str]) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"this export needs {', '.join(missing)}: pip install 'gpt2kit[export]'")


def export(
    model: str | Path | None,
    out: str | Path,
    *,
    type: str = ExportOptions.type,
    int8: bool = ExportOptions.int8,
    checkpoint: str | None = ExportOptions.checkpoint,
    offline: bool | None = ExportOptions.offline,
    adapter: str | Path | None = ExportOptions.adapter,
) -> Path:
    """Write `model` (a folder or file in any format gpt2kit reads, a published name, None: the bundled one) to `out`.

    `.gguf`: llama.cpp's gpt2 architecture, tensors in `type` (f32, f16 or q8_0) with the whole vocabulary.
    `.onnx`: a decoder with past key/values (float32; `int8`: int8 weights, onnxruntime's weight-only quantizer).
    no suffix: a folder with that ONNX file, genai_config.json and tokenizer.json, for onnxruntime-genai.
    `adapter`: a LoRA adapter (PEFT's format) merged into the weights first.
    Defaults: gpt2kit.options.ExportOptions.
    """
    from .gguf import check_type, write_gguf

    out = Path(out).expanduser()
    _check_out(out)
    onnx = out.suffix.lower() in (".onnx", "")
    if onnx and type != ExportOptions.type:
        raise UserError("--type is for GGUF; an ONNX export is float32, or int8 with --int8")
    if not onnx and int8:
        raise UserError("--int8 is for ONNX; a GGUF's precision is --type f32, f16 or q8_0")
    check_type(type)
    _check_installed(["onnx", "onnxscript"] + (["onnxruntime"] if int8 else []) if onnx else ["gguf"])
    from .source import load_source

    source = load_source(model, checkpoint=checkpoint, offline=offline, adapter=adapter)
    if not out.suffix:
        from .genai import write_genai_folder

        return write_genai_folder(source, out, int8=int8)
    if onnx:
        from .onnx import write_onnx

        return write_onnx(source, out, int8=int8)
    return write_gguf(source, out, type=type)


__all__ = ["export"]
