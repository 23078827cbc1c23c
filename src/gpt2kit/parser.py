"""The `gpt2kit` argument parser: one subparser per command."""
from __future__ import annotations

import argparse

from .cli import _Parser, add_model_args, add_sampling_args


def build_parser() -> argparse.ArgumentParser:
    from . import __version__, commands as c, commands_train as t
    parser = _Parser(prog="gpt2kit", description="Run, fine-tune and serve GPT-2.")
    parser.add_argument("--version", action="version", version=f"gpt2kit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("generate", help="generate text (streamed), from prompts, a file, stdin, or unconditionally")
    p.add_argument("prompt", nargs="*", help="one or more prompts (none: read stdin if piped, else unconditional)")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--prompt-file", help="prompts, one per line (\\n for newlines), or a .jsonl file; - for stdin")
    p.add_argument("--prompt-field", help="the JSONL field holding the prompt (default 'prompt')")
    p.add_argument("--sample-delim", "--sample_delim", dest="sample_delim", help="text between samples (default 20 '=' and a newline)")
    p.add_argument("--format", choices=["text", "jsonl"], default="text", help="jsonl: one JSON object per sample")
    p.add_argument("--output", help="write the samples to this file instead of the terminal")
    p.add_argument("--output-dir", help="one file per sample in this folder (existing files are kept)")
    p.set_defaults(func=c.cmd_generate)

    p = sub.add_parser("interactive", help="a prompt loop, like OpenAI's interactive_conditional_samples.py")
    add_model_args(p)
    add_sampling_args(p)
    p.set_defaults(func=c.cmd_interactive)

    p = sub.add_parser("info", help="format, sizes, parameters and vocabulary of a model")
    p.add_argument("model_path", nargs="?", help="a folder or published name (default: the bundled model)")
    p.add_argument("--checkpoint")
    p.add_argument("--offline", action="store_true", default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=c.cmd_info)

    p = sub.add_parser("convert", help="write any GPT-2 checkpoint as a Hugging Face / gpt2kit folder")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--checkpoint")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.set_defaults(func=c.cmd_convert)

    p = sub.add_parser("encode", help="encode text files, folders, globs into a token dataset")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--output", "-o", required=True, help="the dataset file to write, e.g. data/posts.tokens")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out whole documents for validation")
    p.add_argument("--no-eot", action="store_true", help="no <|endoftext|> between documents")
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"])
    p.add_argument("--column", help="CSV column (name or number; default the first)")
    p.add_argument("--field", default="text", help="JSONL field (default text)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=t.cmd_encode)

    p = sub.add_parser("decode", help="print a token dataset back as text")
    p.add_argument("dataset")
    p.set_defaults(func=t.cmd_decode)

    p = sub.add_parser("finetune", help="fine-tune (or train from scratch) on a dataset; Ctrl-C saves, rerun resumes")
    p.add_argument("--dataset", nargs="+", required=True, help="a token dataset, or text files/folders to encode first")
    p.add_argument("--model", "--model_name", "--model-name", dest="model", help="start from this model (default: the bundled one)")
    p.add_argument("--models-dir", "--models_dir", dest="models_dir")
    p.add_argument("--run-name", "--run_name", dest="run_name", default="run1")
    t.add_train_options(p)
    p.set_defaults(func=t.cmd_finetune)

    p = sub.add_parser("perplexity", help="loss and perplexity of a model on text or a token dataset")
    p.add_argument("files", nargs="+")
    add_model_args(p)
    p.add_argument("--context-length", type=int)
    p.set_defaults(func=t.cmd_perplexity)

    from . import commands_hub as h
    h.add_hub_commands(sub)

    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible API with a web playground")
    p.add_argument("--model", "--model_name", dest="model", help="a folder or published name (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require Authorization: Bearer KEY (or set GPT2KIT_API_KEY)")
    p.add_argument("--served-name", help="the model id clients send (default: the folder's name)")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting before 429")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="the largest max_tokens a request may ask")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--offline", action="store_true", default=None)
    p.set_defaults(func=h.cmd_serve)
    return parser
