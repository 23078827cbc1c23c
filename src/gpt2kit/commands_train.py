"""Subcommands for data and training: encode, decode, finetune, perplexity."""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from pathlib import Path

from .cli import log
from .errors import UserError
from .training.options import TrainOptions

HELP = {
    "steps": "total steps to reach; the same command resumes to the same end (default 1000)",
    "epochs": "or: passes over the training tokens",
    "batch_size": "windows per step on each process",
    "context_length": "window length in tokens (default: the model's context)",
    "accumulate_gradients": "micro-batches per optimiser step",
    "lr_schedule": "constant | cosine | linear",
    "optimizer": "adamw | adam | sgd",
    "noise": "probability of replacing an input token with a random one (nshepperd)",
    "gradient_checkpointing": "recompute activations in backward: much less memory, ~30%% slower",
    "only_train_transformer_layers": "freeze the embeddings and final norm",
    "freeze_layers": "freeze the embeddings and the first N blocks",
    "dtype": "auto | float32 | bfloat16 | float16 (mixed precision, fp32 master weights)",
    "from_scratch": "a new model of --n-layer/--n-embd/--n-head/--n-ctx on GPT-2's vocabulary",
    "restore_from": "latest (resume the run if it has checkpoints) | fresh | PATH (any format)",
    "overwrite": "with --restore-from fresh: replace an existing run",
    "sample_every": "write samples every N steps (0 = off)",
    "val_dataset": "validation tokens (or text)",
    "val_fraction": "hold out this fraction for validation",
    "progress": "show a progress bar",
}


def add_train_options(p: argparse.ArgumentParser) -> None:
    """One flag per TrainOptions field, with its default taken from there (and an underscore alias)."""
    hints = typing.get_type_hints(TrainOptions)
    for f in dataclasses.fields(TrainOptions):
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        hint = hints[f.name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        help_text = HELP.get(f.name, "") + (f" (default {f.default})" if f.default is not None else "")
        if base is bool:
            p.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(*flags, dest=f.name, type=base, default=None, help=help_text)


def cmd_encode(args) -> int:
    from .data.encode import encode_dataset
    s = encode_dataset(args.inputs, args.output, val_fraction=args.val_fraction, eot=not args.no_eot,
                       encoding=args.encoding, errors=args.errors, column=args.column, field=args.field,
                       progress=not args.quiet)
    print(f"{s['documents']:,} documents from {s['files']:,} files, {s['bytes'] / 1e6:.2f} MB -> {s['tokens']:,} tokens "
          f"({s['bytes_per_token']:.2f} bytes/token) in {s['seconds']:.1f} s ({s['mb_per_s']:.1f} MB/s)")
    print(f"train: {s['train_tokens']:,} tokens -> {s['output']}")
    if s["val_output"]:
        print(f"validation: {s['val_documents']:,} documents, {s['val_tokens']:,} tokens -> {s['val_output']}")
    return 0


def cmd_decode(args) -> int:
    from .data.encode import decode_dataset
    for piece in decode_dataset(args.dataset):
        sys.stdout.write(piece)
    sys.stdout.flush()
    return 0


def cmd_finetune(args) -> int:
    from .training.loop import finetune
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions) if getattr(args, f.name) is not None}
    model = args.model
    if model and args.models_dir and not Path(model).exists():
        model = str(Path(args.models_dir) / model)
    if model is None and not options.get("from_scratch"):
        log.info("no --model: fine-tuning the small bundled model (pass --model 124M for real GPT-2)")
    final = finetune(dataset=args.dataset, model=model, run_name=args.run_name, **options)
    print(f"checkpoint: {final}")
    return 0


def cmd_perplexity(args) -> int:
    import torch
    from .data.tokens import is_token_file, read_tokens
    from .lm import load
    from .training.loop import strided_loss
    import numpy as np
    lm = load(args.model, device=args.device, dtype=args.dtype, checkpoint=args.checkpoint, offline=args.offline)
    window = min(args.context_length or lm.config.n_ctx, lm.config.n_ctx)
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path} does not exist")
        if is_token_file(path):
            tokens = read_tokens(path)
        else:
            from .data.extract import ReadOptions, documents
            ids: list[int] = []
            for doc in documents(path, ReadOptions()):
                ids += lm.tokenizer.encode(doc) + [lm.tokenizer.eot_id]
            tokens = np.asarray(ids, dtype=np.int64)
        if tokens.size < 2:
            raise UserError(f"{path} has fewer than 2 tokens")
        loss = strided_loss(lm.model, tokens, window, lm.device)
        print(f"{path}: {tokens.size:,} tokens, loss {loss:.4f} nats/token, perplexity {math.exp(loss):.2f}")
    return 0
