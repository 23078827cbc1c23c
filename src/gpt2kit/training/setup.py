"""What a training run starts from: the dataset, the model, the optimiser, the distributed set-up."""
from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

import torch.distributed as dist

from ..config import GPTConfig
from ..data.encode import encode_dataset, val_path_for
from ..data.extract import expand_inputs
from ..data.tokens import is_token_file, read_tokens
from ..errors import UserError
from ..paths import datasets_dir
from ..tokenizer import Tokenizer
from .options import DEFAULT_STEPS, TrainOptions

log = logging.getLogger("gpt2kit")


def prepare_dataset(dataset, opts: TrainOptions, tokenizer: Tokenizer, is_main: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(train, validation or None): a token file as it is; text inputs are encoded first, cached by content hash.
    Validation is --val-dataset (tokens or text, likewise), else the --val-fraction held out of the dataset."""
    items = [dataset] if isinstance(dataset, (str, Path)) else list(dataset)
    if not items:
        raise UserError("no dataset given")
    paths = [Path(p) for p in items]
    if len(paths) > 1 and any(p.is_file() and is_token_file(p) for p in paths):
        raise UserError("--dataset takes one token file, or text files, folders and globs (encoded together); "
                        "to train on several token files, encode their text together with `gpt2kit encode`")
    val = _validation(opts, tokenizer, is_main)
    if len(paths) == 1 and paths[0].is_file() and is_token_file(paths[0]):
        train = read_tokens(paths[0])
        if val is None and opts.val_fraction:
            cut = int(train.size * (1 - opts.val_fraction))
            train, val = train[:cut], train[cut:]
        return train, val
    cached = _encoded(items, tokenizer, opts.val_fraction, opts.progress, is_main)
    if val is None and opts.val_fraction:
        val = read_tokens(val_path_for(cached))
    return read_tokens(cached), val


def _validation(opts: TrainOptions, tokenizer: Tokenizer, is_main: bool) -> np.ndarray | None:
    if not opts.val_dataset:
        return None
    path = Path(opts.val_dataset)
    if path.is_file() and is_token_file(path):
        return read_tokens(path)
    return read_tokens(_encoded([opts.val_dataset], tokenizer, 0.0, opts.progress, is_main))


def _encoded(items: list, tokenizer: Tokenizer, val_fraction: float, progress: bool, is_main: bool) -> Path:
    """Text files, folders and globs encoded once into the datasets cache, keyed by their content."""
    files = expand_inputs(items)
    h = hashlib.sha256(f"{tokenizer.source}|{tokenizer.n_vocab}|{val_fraction}".encode())
    for f in files:
        h.update(str(f.resolve()).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    cached = datasets_dir() / f"{h.hexdigest()[:20]}.tokens"
    if is_main and not cached.is_file():
        log.info("encoding %d file(s) into %s", len(files), cached)
        encode_dataset(files, cached, val_fraction=val_fraction, tokenizer=tokenizer, progress=progress)
    elif is_main:
        log.info("using the encoded dataset cached at %s", cached)
    barrier()
    return cached


def total_steps(opts: TrainOptions, n_tokens: int, window: int, world_size: int) -> int:
    if opts.steps is not None:
        return opts.steps
    if opts.epochs is not None:
        per_step = opts.batch_size * world_size * opts.accumulate_gradients * window
        return max(1, math.ceil(opts.epochs * n_tokens / per_step))
    return DEFAULT_STEPS


def make_optimizer(parameters: list[torch.Tensor], opts: TrainOptions, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer over the trainable ones of `parameters` (the model's, or its fp32 masters)."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise UserError("every layer is frozen: nothing would train; lower --freeze-layers")
    # Weight decay on matrices only, not on biases and LayerNorm gains (as GPT-2 and nanoGPT do).
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if opts.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=opts.learning_rate, momentum=0.9)
    cls = torch.optim.AdamW if opts.optimizer == "adamw" else torch.optim.Adam
    # The fused kernel is one pass over all parameters instead of a loop of small ops.
    fused = device.type in ("cuda", "cpu")
    return cls(groups, lr=opts.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def lr_at(step: int, total: int, opts: TrainOptions) -> float:
    """Learning rate for `step` (0-based): linear warm-up, then constant, cosine or linear decay to 10%."""
    base = opts.learning_rate
    if step < opts.warmup_steps:
        return base * (step + 1) / opts.warmup_steps
    if opts.lr_schedule == "constant":
        return base
    progress = min(1.0, (step - opts.warmup_steps) / max(1, total - opts.warmup_steps))
    floor = 0.1 * base
    if opts.lr_schedule == "linear":
        return base - (base - floor) * progress
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * progress))


def freeze(model, opts: TrainOptions) -> None:
    if opts.only_train_transformer_layers or opts.freeze_layers:
        for p in (*model.wte.parameters(), *model.wpe.parameters()):
            p.requires_grad = False
    if opts.only_train_transformer_layers:
        for p in model.ln_f.parameters():
            p.requires_grad = False
    if opts.freeze_layers > model.config.n_layer:
        raise UserError(f"--freeze-layers {opts.freeze_layers} is more than the model's {model.config.n_layer} layers")
    for block in list(model.h)[:opts.freeze_layers]:
        for p in block.parameters():
            p.requires_grad = False


def scratch_config(opts: TrainOptions, n_vocab: int) -> GPTConfig:
    return GPTConfig(n_vocab=n_vocab, n_ctx=opts.n_ctx, n_embd=opts.n_embd, n_head=opts.n_head, n_layer=opts.n_layer)


# --- distributed -------------------------------------------------------------------------------

def init_distributed(device: torch.device) -> tuple[int, int, int]:
    """(rank, local_rank, world_size); joins the process group when launched by torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()
