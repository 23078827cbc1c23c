"""`gpt2kit finetune`: one flag per TrainOptions field, which owns every default."""

from __future__ import annotations

import argparse

from ..samplers.help import HELP as SAMPLER_HELP
from ..training.options import DEFAULT_STEPS, TrainOptions
from .common import add_field, field_names, given, log, model_name

# Help for the fields whose names do not say it all; defaults are added from TrainOptions.
HELP = {
    "steps": f"total steps to reach; the same command resumes to the same end (default {DEFAULT_STEPS})",
    "epochs": "instead of --steps (not with it): passes over the training tokens",
    "batch_size": "windows per step on each process",
    "context_length": "window length in tokens (default: the model's context)",
    "accumulate_gradients": "micro-batches per optimiser step",
    "lr_schedule": "constant | cosine | linear",
    "optimizer": "adamw | adam | sgd",
    "noise": "probability of replacing an input token with a random one (nshepperd)",
    "gradient_checkpointing": "recompute activations in backward: much less memory, ~30% slower",
    "only_train_transformer_layers": "freeze the embeddings and final norm",
    "freeze_layers": "freeze the embeddings and the first N blocks",
    "dtype": "auto | float32 | bfloat16 | float16 (mixed precision, fp32 master weights; with --lora-rank: the frozen base's dtype)",
    "fsdp": "with torchrun: shard weights, gradients and optimizer state across the processes (FSDP)",
    "from_scratch": "a new model of --n-layer/--n-embd/--n-head/--n-ctx on GPT-2's vocabulary",
    "restore_from": "latest (resume the run if it has checkpoints) | fresh | PATH (any format)",
    "overwrite": "with --restore-from fresh: replace an existing run",
    "sample_every": "write samples every N steps (0 = off)",
    "sample_temperature": "the samples' temperature (0 = greedy)",
    "sample_top_k": "the samples keep the k likeliest tokens (0 = off)",
    "sample_top_p": "the samples' nucleus sampling; 1.0 = off",
    "sample_repetition_penalty": "the samples' CTRL penalty on tokens already seen; 1.0 = off",
    **{f"sample_{name}": f"the samples' {text}" for name, text in SAMPLER_HELP.items()},
    "val_dataset": "validation data: a token file, or text (files, folders, globs) encoded as --dataset is",
    "val_fraction": "hold out this fraction for validation",
    "progress": "show a progress bar",
    "run_name": "the run's folder under --checkpoint-dir (and --sample-dir): one plain folder name",
    "lora_rank": "train LoRA adapters of this rank on a frozen base (PEFT's format); default: every weight trains",
    "lora_alpha": "the LoRA update is scaled by alpha / rank (default: alpha = rank)",
    "lora_dropout": "dropout on the LoRA branch's input",
    "lora_targets": "the matrices to adapt: c_attn, c_proj (both), c_fc, attn.c_proj, mlp.c_proj",
}


def register(sub) -> None:
    p = sub.add_parser(
        "finetune",
        example=("gpt2kit finetune --dataset data/posts.tokens --model 124M --steps 1000 --run-name run1",),
        help="fine-tune (or train from scratch) on a dataset; Ctrl-C saves, rerun resumes",
    )
    p.add_argument("--dataset", nargs="+", required=True, help="a token dataset, or text files/folders to encode first")
    p.add_argument(
        "--model", "--model_name", "--model-name", dest="model", help="start from this model (default: the bundled one)"
    )
    p.add_argument("--models-dir", "--models_dir", dest="models_dir")
    add_train_options(p)
    p.set_defaults(func=cmd_finetune)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """One flag per TrainOptions field (and an underscore alias), its default taken from there."""
    for name in field_names(TrainOptions):
        if name == "sample_dry_sequence_breakers":  # a list: the flag repeats
            add_field(
                p,
                TrainOptions,
                name,
                action="append",
                metavar="TEXT",
                show_default=False,
                help=HELP[name] + "; repeatable, replaces the defaults",
            )
        else:
            add_field(p, TrainOptions, name, help=HELP.get(name, ""))


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..training.loop import finetune

    options = given(args, *field_names(TrainOptions))
    TrainOptions.from_kwargs(**options)  # a mistaken option is the only line, before any notice
    model = model_name(args)
    if model is None and not options.get("from_scratch"):
        log.info("no --model: fine-tuning the small bundled model (pass --model 124M for real GPT-2)")
    final = finetune(dataset=args.dataset, model=model, **options)
    print(f"checkpoint: {final}")
    return 0
