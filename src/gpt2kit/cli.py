"""The `gpt2kit` command: argument parsing that calls the library, and nothing else.

Every option's default is the library function's own (options left unset are not passed), so
defaults live in one place.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import UserError

log = logging.getLogger("gpt2kit")


class _Handler(logging.Handler):
    """Messages to stderr without breaking a progress bar; warnings say who is speaking."""

    def emit(self, record):
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"gpt2kit: {msg}"
        try:
            from tqdm import tqdm
            tqdm.write(msg, file=sys.stderr)
        except Exception:
            print(msg, file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line and exit code 2, like ours
        self.exit(2, f"gpt2kit: {message} (see `{self.prog} --help`)\n")


def given(args: argparse.Namespace, *names: str) -> dict:
    """The options the user set, for passing on: unset ones keep the library's defaults."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--model_name", "--model-name", dest="model", default=None,
                   help="a folder in any GPT-2 format, or 124M/355M/774M/1558M (default: the small bundled model)")
    p.add_argument("--models-dir", "--models_dir", dest="models_dir", default=None,
                   help="look for published models in DIR/<name> (OpenAI's layout), as download_model.py writes them")
    p.add_argument("--checkpoint", default=None, help="which checkpoint in a run folder: model-N (TF runs) or step-N (gpt2kit runs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (or fp32, bf16, fp16) | int8 (CPU: int8 weights, a quarter of the bytes)")
    p.add_argument("--offline", action="store_true", default=None, help="never download; fail if the model is not here")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, help="new tokens per sample (default: until <|endoftext|> or the context is full)")
    p.add_argument("--temperature", type=float, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, help="keep the k likeliest tokens; 0 = off (default)")
    p.add_argument("--top-p", "--top_p", dest="top_p", type=float, help="nucleus sampling; 1.0 = off (default)")
    p.add_argument("--repetition-penalty", "--repetition_penalty", dest="repetition_penalty", type=float,
                   help="CTRL's penalty on tokens already seen; 1.0 = off (default)")
    p.add_argument("--stop", action="append", help="stop where this text appears, and drop it (repeatable)")
    p.add_argument("--seed", type=int, help="same seed and settings give the same text, whatever the batch size")
    p.add_argument("--nsamples", type=int, help="samples per prompt (default 1; 0 = until interrupted)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, help="samples generated together")
    p.add_argument("--truncate", help="cut each sample at the first occurrence of this text (gpt-2-simple)")
    p.add_argument("--include-prefix", "--include_prefix", dest="include_prefix", action=argparse.BooleanOptionalAction,
                   default=None, help="print the prompt before its continuation (default on)")
    p.add_argument("--no-stop-at-eot", dest="stop_at_eot", action="store_false", default=None,
                   help="keep generating past <|endoftext|>")


def _model_name(args) -> str | None:
    if args.model and getattr(args, "models_dir", None) and not Path(args.model).exists():
        return str(Path(args.models_dir) / args.model)
    return args.model


def _load(args):
    from .lm import load
    lm = load(_model_name(args), device=args.device, dtype=args.dtype, checkpoint=args.checkpoint, offline=args.offline)
    if lm.info.get("bundled"):
        log.warning("using the small model bundled with gpt2kit (Shakespeare and the King James Bible); "
                    "for real GPT-2 run `gpt2kit download 124M` and pass --model 124M")
    return lm


SAMPLING = ("length", "temperature", "top_k", "top_p", "repetition_penalty", "stop", "seed", "nsamples",
            "batch_size", "truncate", "include_prefix", "stop_at_eot")


def main(argv: list[str] | None = None) -> int:
    from .parser import build_parser
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = _Handler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"gpt2kit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gpt2kit generate ... | head`
        sys.stderr.close()
        return 0
    finally:
        log.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
