"""`gpt2kit merge`: a base model and a LoRA adapter -> one plain model folder."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "merge",
        example=("gpt2kit merge 124M checkpoint/lora1/step-001000 models/124M-posts",),
        help="merge a LoRA adapter (gpt2kit's or PEFT's) into its base: a plain model folder",
    )
    p.add_argument("base", help="the base model: a folder in any GPT-2 format, or 124M/355M/774M/1558M")
    p.add_argument(
        "adapter", help="the adapter folder (adapter_config.json + adapter_model.safetensors), or a LoRA run"
    )
    p.add_argument("out", help="the new model folder (must not exist, or be empty)")
    p.add_argument("--checkpoint", default=None, help="which checkpoint of BASE when it is a run folder")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from ..adapters.merge import merge

    out = merge(args.base, args.adapter, args.out, checkpoint=args.checkpoint)
    print(f"merged model: {out}")
    return 0
