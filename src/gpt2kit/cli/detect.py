"""`gpt2kit detect`: whether a text carries a key's watermark. Needs the key and GPT-2's tokenizer, no model.

Exit status, for scripts: 0 watermarked (z above the threshold), 1 not watermarked, 2 a mistake in the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..options import DECODE_ERRORS, DetectOptions, EncodeOptions
from .common import add_field, given

WATERMARKED, NOT_WATERMARKED = 0, 1  # exit codes; 2 is every command's for a mistake (errors.UserError)


def register(sub) -> None:
    p = sub.add_parser(
        "detect",
        help="is a text watermarked with a key? (exit 0: yes, 1: no; no model needed)",
        description="Count the tokens on the watermark's green lists (Kirchenbauer et al. 2023, "
        "transformers' lefthash scheme) and test the count: z-score, p-value, verdict. "
        "Exit status: 0 watermarked, 1 not watermarked, 2 a mistake in the command.",
        example=("gpt2kit detect sample.txt --watermark-key 15485863 && echo marked",),
    )
    p.add_argument("file", metavar="FILE", help="a text file (best without its prompt), or - for standard input")
    add_field(
        p, DetectOptions, "watermark_key", required=True, show_default=False, help="the key the text was generated with"
    )
    add_field(p, DetectOptions, "watermark_gamma", help="the green list's share of the vocabulary, as generated")
    add_field(p, DetectOptions, "watermark_context_width", help="tokens before the first marked one, as generated")
    add_field(p, DetectOptions, "z_threshold", help="watermarked above this z-score")
    add_field(
        p,
        DetectOptions,
        "ignore_repeated_ngrams",
        help="count each distinct run of context + token once, so a looping text is not scored on its repeats",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: the verdict, then the z-score, p-value and green count; json: one object (default text)",
    )
    add_field(p, EncodeOptions, "encoding", help="the file's encoding")
    add_field(
        p, EncodeOptions, "errors", choices=DECODE_ERRORS, help="undecodable bytes: stop, replace them, or drop them"
    )
    p.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from ..provenance.source import read_source
    from ..provenance.watermark import detect
    from ..tokenizer import gpt2_tokenizer

    options = DetectOptions(**given(args, *(f.name for f in dataclasses.fields(DetectOptions))))
    text = read_source(args.file, file_only=True, **given(args, "encoding", "errors"))
    found = detect(
        gpt2_tokenizer().encode(text),
        key=options.watermark_key,
        gamma=options.watermark_gamma,
        context_width=options.watermark_context_width,
        z_threshold=options.z_threshold,
        ignore_repeated_ngrams=options.ignore_repeated_ngrams,
    )
    if args.format == "json":
        print(json.dumps(found.as_dict()))
    else:
        print(
            f"{found.verdict}\n"
            f"z-score  {found.z:.2f} (threshold {found.z_threshold:g})\n"
            f"p-value  {found.p_value:.3g}\n"
            f"green    {found.green} of {found.scored} tokens ({found.green / found.scored:.1%}; "
            f"{found.gamma:.1%} expected without this watermark)"
        )
    return WATERMARKED if found.watermarked else NOT_WATERMARKED
