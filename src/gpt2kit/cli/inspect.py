"""`gpt2kit inspect`: how expected each token of a text is under a model (GLTR), in the terminal, as JSON
or as one HTML page."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .. import durable
from ..errors import UserError
from ..options import DECODE_ERRORS, EncodeOptions, InspectOptions
from .common import add_field, add_model_args, given, load_model


def register(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="each token's rank, probability and entropy under a model (GLTR)",
        example=(
            "gpt2kit inspect 'ROMEO. What light through yonder window breaks?'",
            "gpt2kit inspect essay.txt --model 124M --html essay.html --format json > essay.json",
        ),
    )
    p.add_argument("source", metavar="TEXT|FILE", help="a text file, - for standard input, or else the text itself")
    add_model_args(p)
    add_field(
        p,
        InspectOptions,
        "context_length",
        help="tokens of context per window (longer texts slide it by half a window)",
        unset="the model's context",
    )
    add_field(p, InspectOptions, "alternatives", help="the top predictions listed with each token (JSON, HTML)")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: the coloured passage, a table of every token, the buckets and histograms; "
        "json: all of it, and each token's alternatives (default text)",
    )
    p.add_argument("--html", metavar="FILE", help="also write one self-contained page to FILE, readable offline")
    p.add_argument(
        "--color",
        "--colour",
        dest="color",
        choices=("auto", "always", "never"),
        default="auto",
        help="GLTR's colours in the text format (auto: when standard output is a terminal and NO_COLOR is unset)",
    )
    add_field(p, EncodeOptions, "encoding", help="a file's encoding")
    add_field(
        p, EncodeOptions, "errors", choices=DECODE_ERRORS, help="undecodable bytes: stop, replace them, or drop them"
    )
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..provenance.inspect import inspect
    from ..provenance.render import page, terminal
    from ..provenance.source import read_source

    options = InspectOptions(**given(args, "context_length", "alternatives"))  # every check before the load
    if args.html:
        _check_html(Path(args.html))
    text = read_source(args.source, **given(args, "encoding", "errors"))
    if not text:
        raise UserError("the text is empty: give some text to inspect")
    lm = load_model(args)
    result = inspect(lm, text, **dataclasses.asdict(options))
    if args.html:
        with durable.open_text_output(Path(args.html)) as f:
            f.write(page(result))
    if args.format == "json":
        print(json.dumps(result.as_dict(), ensure_ascii=False))
    else:
        tty = sys.stdout.isatty() and not os.environ.get("NO_COLOR")  # https://no-color.org
        colour = args.color == "always" or (args.color == "auto" and tty)
        print(terminal(result, colour=colour))
    return 0


def _check_html(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"--html {path} is a folder; name the page's file, e.g. {path / 'inspect.html'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write {path} (it is read-only); choose another --html file or make it writable")
    durable.check_text_output(path)
