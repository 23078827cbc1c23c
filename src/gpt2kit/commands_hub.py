"""Subcommands for the model cache: download, models."""
from __future__ import annotations

import argparse


def add_hub_commands(sub) -> None:
    p = sub.add_parser("download", help="download published GPT-2 models (124M 355M 774M 1558M)")
    p.add_argument("names", nargs="+")
    p.add_argument("--source", choices=["openai", "huggingface"], default="openai")
    p.add_argument("--models-dir", "--models_dir", dest="models_dir", help="write OpenAI's layout DIR/<name>/ instead of the cache")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("models", help="list the models on this machine; `models rm NAME` deletes one")
    p.add_argument("action", nargs="?", choices=["list", "rm"], default="list")
    p.add_argument("names", nargs="*")
    p.set_defaults(func=cmd_models)


def cmd_download(args) -> int:
    from .hub import download
    for path in download(*args.names, source=args.source, models_dir=args.models_dir):
        print(f"ready: {path}")
    return 0


def cmd_models(args) -> int:
    from .hub import list_models, remove_model
    if args.action == "rm":
        from .errors import UserError
        if not args.names:
            raise UserError("say which model to remove: gpt2kit models rm NAME")
        for name in args.names:
            freed = remove_model(name)
            print(f"removed {name} ({freed / 1e6:.1f} MB freed)")
        return 0
    rows = list_models()
    print(f"{'name':<28} {'format':<12} {'size':>10}  path")
    for r in rows:
        print(f"{r['name']:<28} {r['format']:<12} {r['bytes'] / 1e6:>8.1f}MB  {r['path']}")
    return 0


def cmd_serve(args) -> int:
    from .server import serve
    serve(args.model, host=args.host, port=args.port, api_key=args.api_key, device=args.device, dtype=args.dtype,
          model_name=args.served_name, max_batch=args.max_batch, max_queue=args.max_queue,
          max_tokens_limit=args.max_tokens_limit, offline=args.offline)
    return 0
