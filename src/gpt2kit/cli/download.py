"""`gpt2kit download` and `gpt2kit models`: published models, GPT-2s on the Hugging Face hub, the local cache."""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..options import DOWNLOAD_SOURCES, DownloadOptions


def register(sub) -> None:
    p = sub.add_parser(
        "download",
        example=("gpt2kit download 124M", "gpt2kit download distilbert/distilgpt2 --revision main"),
        help="download published GPT-2 models (124M 355M 774M 1558M) or any GPT-2 on the Hugging Face hub (OWNER/NAME)",
    )
    p.add_argument(
        "names", nargs="+", metavar="NAME", help="124M/355M/774M/1558M, or a hub repository OWNER/NAME[@REVISION]"
    )
    p.add_argument(
        "--source",
        choices=DOWNLOAD_SOURCES,
        help="for the published names: openai, OpenAI's original TensorFlow files; huggingface, the "
        f"Hugging Face hub's safetensors (default {DownloadOptions.source})",
    )
    p.add_argument(
        "--revision",
        help="for hub repositories: a branch, tag or commit (default "
        f"{DownloadOptions.revision}); each revision is kept in its own folder",
    )
    p.add_argument(
        "--models-dir",
        "--models_dir",
        dest="models_dir",
        help="write OpenAI's layout DIR/<name>/ (hub repositories: DIR/OWNER/NAME) instead of the cache",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="download nothing: succeed only if the models are here already (also GPT2KIT_OFFLINE=1)",
    )
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "models",
        example=("gpt2kit models", "gpt2kit models rm 355M"),
        help="list the models on this machine; `models rm NAME` deletes one",
    )
    p.add_argument("action", nargs="?", choices=["list", "rm"], default="list")
    p.add_argument("names", nargs="*")
    p.set_defaults(func=cmd_models)


def cmd_download(args: argparse.Namespace) -> int:
    from ..hub import download

    for path in download(
        *args.names, models_dir=args.models_dir, source=args.source, revision=args.revision, offline=args.offline
    ):
        print(f"ready: {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..hub import list_models, remove_model

    if args.action == "rm":
        if not args.names:
            raise UserError("say which model to remove: gpt2kit models rm NAME")
        for name in args.names:
            freed = remove_model(name)
            print(f"removed {name} ({freed / 1e6:.1f} MB freed)")
        return 0
    print(f"{'name':<28} {'format':<12} {'size':>10}  path")
    for r in list_models():
        print(f"{r['name']:<28} {r['format']:<12} {r['bytes'] / 1e6:>8.1f}MB  {r['path']}")
    return 0
