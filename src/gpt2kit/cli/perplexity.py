"""`gpt2kit perplexity`: loss and perplexity of a model on text files or token datasets."""
from __future__ import annotations

import argparse

from .common import add_model_args, load_model


def register(sub) -> None:
    p = sub.add_parser("perplexity", help="loss and perplexity of a model on text or a token dataset")
    p.add_argument("files", nargs="+")
    add_model_args(p)
    p.add_argument("--context-length", type=int, help="tokens per scoring window (default: the model's context)")
    p.set_defaults(func=cmd_perplexity)


def cmd_perplexity(args: argparse.Namespace) -> int:
    from ..evaluation import perplexity
    lm = load_model(args)
    for name in args.files:
        r = perplexity(lm, name, context_length=args.context_length)
        print(f"{r.path}: {r.tokens:,} tokens, loss {r.loss:.4f} nats/token, perplexity {r.perplexity:.2f}")
    return 0
