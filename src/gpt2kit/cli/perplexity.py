"""`gpt2kit perplexity`: loss and perplexity of a model on text files or token datasets."""

from __future__ import annotations

import argparse

from ..options import DECODE_ERRORS, EncodeOptions
from .common import add_field, add_model_args, given, load_model


def register(sub) -> None:
    p = sub.add_parser(
        "perplexity",
        example=("gpt2kit perplexity --model checkpoint/run1 held_out.txt data/posts.val.tokens",),
        help="loss and perplexity of a model on text or a token dataset",
    )
    p.add_argument("files", nargs="+")
    add_model_args(p)
    p.add_argument("--context-length", type=int, help="tokens per scoring window (default: the model's context)")
    # Text files are read as `encode` reads them, so a file and its token dataset score the same.
    add_field(p, EncodeOptions, "encoding", help="the text files' encoding")
    add_field(
        p, EncodeOptions, "errors", choices=DECODE_ERRORS, help="undecodable bytes: stop, replace them, or drop them"
    )
    p.set_defaults(func=cmd_perplexity)


def cmd_perplexity(args: argparse.Namespace) -> int:
    from ..evaluation import check_context_length, check_input, input_tokens, read_options, score

    check_context_length(args.context_length)  # every check that needs no model, before it loads
    paths = [check_input(name) for name in args.files]
    opts = read_options(**given(args, "encoding", "errors"))
    lm = load_model(args)
    inputs = [(path, input_tokens(lm, path, opts)) for path in paths]  # every file readable before any is scored
    for path, tokens in inputs:
        r = score(lm, path, tokens, args.context_length)
        print(f"{r.path}: {r.tokens:,} tokens, loss {r.loss:.4f} nats/token, perplexity {r.perplexity:.2f}")
    return 0
