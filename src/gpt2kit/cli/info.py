"""`gpt2kit info` and `gpt2kit convert`: what a checkpoint holds, and the same weights in another format."""

from __future__ import annotations

import argparse
import json

from ..options import CONVERT_DTYPES, ConvertOptions, GenerateOptions
from ..samplers.help import HELP as SAMPLER_HELP
from .common import add_field, field_names, given


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        example=("gpt2kit info checkpoint/run1",),
        help="format, sizes, parameters and vocabulary of a model, and the samplers it runs with",
    )
    p.add_argument("model_path", nargs="?", help="a folder or published name (default: the bundled model)")
    p.add_argument("--checkpoint")
    p.add_argument("--offline", action="store_true", default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "convert",
        example=("gpt2kit convert models/124M gpt2-hf",),
        help="write any GPT-2 checkpoint as a Hugging Face / gpt2kit folder",
    )
    p.add_argument("src")
    p.add_argument("dst")
    add_field(p, ConvertOptions, "checkpoint", help="which checkpoint of a run folder (default: the newest)")
    add_field(p, ConvertOptions, "dtype", choices=CONVERT_DTYPES)
    p.set_defaults(func=cmd_convert)


def cmd_info(args: argparse.Namespace) -> int:
    from ..cpu import status as cpu_status
    from ..formats import read_checkpoint
    from ..hub import resolve_model_path

    folder = resolve_model_path(args.model_path if args.model_path else None, offline=args.offline)
    ck = read_checkpoint(folder, args.checkpoint)
    c = ck.config
    n_params = sum(t.numel() for t in ck.state_dict.values())
    info = {
        "path": str(ck.path),
        "format": ck.format,
        "checkpoint": ck.checkpoint,
        "parameters": n_params,
        "n_layer": c.n_layer,
        "n_embd": c.n_embd,
        "n_head": c.n_head,
        "n_ctx": c.n_ctx,
        "n_vocab": c.n_vocab,
        "vocabulary": ck.tokenizer.source,
        "notes": ck.notes,
        "cpu_kernels": cpu_status(),
        "cpu_auto": _auto_on_this_cpu(ck),
        "samplers": {n: SAMPLER_HELP[n] for n in GenerateOptions.SAMPLERS},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model       {ck.path}")
    print(f"format      {ck.format}" + (f" (checkpoint {ck.checkpoint})" if ck.checkpoint else ""))
    print(f"parameters  {n_params:,} ({n_params / 1e6:.1f}M)")
    print(f"layers      {c.n_layer}, width {c.n_embd}, heads {c.n_head}")
    print(f"context     {c.n_ctx} tokens")
    print(f"vocabulary  {c.n_vocab} tokens, from {ck.tokenizer.source}")
    for note in ck.notes:
        print(f"note        {note}")
    print(f"cpu kernels {info['cpu_kernels']}")
    print(f"cpu auto    {info['cpu_auto']}")
    print("samplers    (their flags: gpt2kit generate --help)")
    for name, text in info["samplers"].items():
        print(f"  {name:<22} {text}")
    return 0


def _auto_on_this_cpu(ck) -> str:
    """What `--dtype auto` takes for this model on this CPU, with the figures it was chosen by."""
    from ..cpu import auto_decision, probe_ids
    from ..formats import build_model

    gpt = build_model(ck.config, ck.state_dict, ck.path, share=True).float().eval()  # info is done with ck's tensors
    return auto_decision(gpt, probe_ids(ck.tokenizer.encode)).summary()


def cmd_convert(args: argparse.Namespace) -> int:
    from ..durable import check_output
    from ..formats import convert

    options = ConvertOptions(**given(args, *field_names(ConvertOptions)))
    from ..hub import resolve_model_path

    dst = check_output(args.dst, folder=True, make_parents=True)  # before the model loads: a bad path costs no time
    out = convert(resolve_model_path(args.src), dst, checkpoint=options.checkpoint, dtype=options.dtype)
    print(f"wrote {out} (config.json, model.safetensors, vocabulary): opens in gpt2kit and Hugging Face transformers")
    return 0
