"""`gpt2kit encode` and `gpt2kit decode`: text to a token dataset and back."""

from __future__ import annotations

import argparse
import sys

from ..data.keywords import DEFAULT_COUNT
from ..options import DECODE_ERRORS, EncodeOptions
from .common import add_field, field_names, given


def register(sub) -> None:
    p = sub.add_parser(
        "encode",
        example=("gpt2kit encode posts/ --output data/posts.tokens --val-fraction 0.1",),
        help="encode text files, folders, globs into a token dataset",
    )
    p.add_argument("inputs", nargs="+")
    p.add_argument("--output", "-o", required=True, help="the dataset file to write, e.g. data/posts.tokens")
    add_field(p, EncodeOptions, "val_fraction", "--val-fraction", help="hold out whole documents for validation")
    add_field(
        p,
        EncodeOptions,
        "eot",
        "--no-eot",
        action="store_false",
        show_default=False,
        help="no <|endoftext|> between documents",
    )
    add_field(p, EncodeOptions, "encoding", help="the input files' text encoding")
    add_field(
        p, EncodeOptions, "errors", choices=DECODE_ERRORS, help="undecodable bytes: stop, replace them, or drop them"
    )
    add_field(p, EncodeOptions, "column", help="CSV column, a name or a number (default: the first)")
    add_field(p, EncodeOptions, "field", help="JSONL field")
    add_field(p, EncodeOptions, "progress", "--quiet", action="store_false", show_default=False, help="no progress bar")
    add_field(
        p,
        EncodeOptions,
        "template",
        help='one document per CSV row or JSONL record, e.g. "[{subreddit}] {title}" ({{ and }} for literal braces)',
    )
    # A flag, not `--keywords [N]`: an optional number would swallow the input after it (--keywords data.csv).
    add_field(
        p,
        EncodeOptions,
        "keywords",
        "--keywords",
        action="store_const",
        const=DEFAULT_COUNT,
        show_default=False,
        help=f"put {DEFAULT_COUNT} keywords of each document in the template's {{keywords}} field, "
        f"or alone on a line before each document",
    )
    add_field(
        p,
        EncodeOptions,
        "keywords",
        "--keywords-count",
        metavar="N",
        show_default=False,
        help="--keywords with N keywords per document",
    )
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode", example=("gpt2kit decode data/posts.tokens",), help="print a token dataset back as text"
    )
    p.add_argument("dataset")
    p.set_defaults(func=cmd_decode)


def cmd_encode(args: argparse.Namespace) -> int:
    from ..data.encode import encode_dataset

    s = encode_dataset(args.inputs, args.output, **given(args, *field_names(EncodeOptions)))
    print(
        f"{s['documents']:,} documents from {s['files']:,} files, {s['bytes'] / 1e6:.2f} MB -> {s['tokens']:,} tokens "
        f"({s['bytes_per_token']:.2f} bytes/token) in {s['seconds']:.1f} s ({s['mb_per_s']:.1f} MB/s)"
    )
    print(f"train: {s['train_tokens']:,} tokens -> {s['output']}")
    if s["val_output"]:
        print(f"validation: {s['val_documents']:,} documents, {s['val_tokens']:,} tokens -> {s['val_output']}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from ..data.encode import decode_dataset

    for piece in decode_dataset(args.dataset):
        sys.stdout.write(piece)
    sys.stdout.flush()
    return 0
