"""`gpt2kit export`: a model in another runtime's format (GGUF for llama.cpp and Ollama, ONNX for onnxruntime)."""

from __future__ import annotations

import argparse

from ..options import ExportOptions
from .common import add_field, field_names, given


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        example=("gpt2kit export checkpoint/run1 run1.gguf --type q8_0", "gpt2kit export bundled tiny.onnx"),
        help="write a model as GGUF (llama.cpp, Ollama, LM Studio) or ONNX (onnxruntime)",
        description="Write MODEL (any format gpt2kit reads, a published name, or `bundled`) "
        "to OUT; OUT's suffix picks the format: .gguf, .onnx, or none for a folder "
        "that onnxruntime-genai runs (model.onnx, genai_config.json, tokenizer.json)",
    )
    p.add_argument("model", help="a folder or file in any GPT-2 format, 124M/355M/774M/1558M, or `bundled`")
    p.add_argument(
        "out",
        help="what to write: a new NAME.gguf or NAME.onnx (an existing file is refused), "
        "or a new (or empty) folder NAME (ONNX for onnxruntime-genai)",
    )
    add_field(p, ExportOptions, "type", help="GGUF tensor type: f32, f16 or q8_0")
    add_field(p, ExportOptions, "int8", help="ONNX: int8 weights (onnxruntime's weight-only quantizer)")
    add_field(p, ExportOptions, "checkpoint", help="which checkpoint of a run folder (default: the newest)")
    add_field(p, ExportOptions, "offline", help="never download a published model")
    add_field(p, ExportOptions, "adapter", metavar="DIR", help="a LoRA adapter (PEFT's format) merged in before export")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export

    options = ExportOptions(**given(args, *field_names(ExportOptions)))
    out = export(
        args.model,
        args.out,
        type=options.type,
        int8=options.int8,
        checkpoint=options.checkpoint,
        offline=options.offline,
        adapter=options.adapter,
    )
    print(f"wrote {out}")
    return 0
