"""What trains and how fast: the frozen layers, the optimizer over the rest, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from .options import DEFAULT_STEPS, TrainOptions


def freeze(model, opts: TrainOptions) -> None:
    """Stop the gradients of what stays fixed: the embeddings (with either option), the first --freeze-layers
    blocks, and with --only-train-transformer-layers (gpt-2-simple's option) the final LayerNorm too."""
    if opts.only_train_transformer_layers or opts.freeze_layers:
        for p in (*model.wte.parameters(), *model.wpe.parameters()):
            p.requires_grad = False
    if opts.only_train_transformer_layers:
        for p in model.ln_f.parameters():
            p.requires_grad = False
    if opts.freeze_layers > model.config.n_layer:
        raise UserError(f"--freeze-layers {opts.freeze_layers} is more than the model's {model.config.n_layer} layers")
    for block in list(model.h)[: opts.freeze_layers]:
        for p in block.parameters():
            p.requires_grad = False


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


def total_steps(opts: TrainOptions, n_tokens: int, window: int, world_size: int) -> int:
    """The run's length in optimizer steps: --steps, else --epochs over `n_tokens`, else the default."""
    if opts.steps is not None:
        return opts.steps
    if opts.epochs is not None:
        per_step = opts.batch_size * world_size * opts.accumulate_gradients * window
        return max(1, math.ceil(opts.epochs * n_tokens / per_step))
    return DEFAULT_STEPS


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
