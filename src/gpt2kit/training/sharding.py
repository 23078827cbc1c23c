"""`--fsdp`: weights, gradients and optimizer state sharded across the processes of a torchrun launch.

DDP keeps a whole copy of the model, its gradients and Adam's two moments on every process: 16
bytes a parameter, 25 GB for 1558M. PyTorch's FSDP (`fully_shard`, FSDP2) keeps 1/world of each,
gathers a block's weights just before it runs and frees them after, and reduce-scatters the
gradients so each process steps only its own shard.

Each transformer block is its own FSDP unit, so at most one block's full weights are gathered at a
time; the root unit owns wte/wpe/ln_f (wte doubles as the tied output head).

In bf16, FSDP's mixed-precision policy plays the part of precision.MasterWeights: the sharded fp32
parameters are the masters the optimizer updates, gathered as bf16 for compute, with gradients
reduced in fp32.

Checkpoints stay ordinary gpt2kit folders: the full fp32 weights, and the optimizer state in the
layout a plain run writes (`optimizer.state_dict()`: parameters numbered in optimizer order). So a
run saved with --fsdp resumes without it, on any number of processes, and the other way round.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from ..errors import UserError
from .precision import FP32, Precision, PrecisionPlan

SHARDED = "FSDP: fp32 weight shards, computed in the run's dtype"
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check_plan(plan: PrecisionPlan) -> None:
    """fp16 needs a gradient scaler that understands sharded gradients; bf16 needs none."""
    if plan.dtype == torch.float16:
        raise UserError("--fsdp trains in float32 or bfloat16; use --dtype bfloat16 (or float32)")


def shard(model: nn.Module, plan: PrecisionPlan) -> None:
    """Shard `model` (fp32, on its device) in place: one FSDP unit per block, then the root."""
    check_plan(plan)
    policy = (
        MixedPrecisionPolicy()
        if plan.mode == FP32
        else MixedPrecisionPolicy(param_dtype=plan.dtype, reduce_dtype=torch.float32)
    )
    for block in model.h:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


class Sharded(Precision):
    """Training state of a sharded model; collective: every process calls these together."""

    def __init__(self, model: nn.Module, plan: PrecisionPlan, device: torch.device):
        super().__init__(model, PrecisionPlan(plan.dtype, SHARDED), device)  # no autocast: the policy casts

    def weights(self) -> dict[str, torch.Tensor]:
        """The full fp32 weights, gathered onto the CPU (complete on rank 0)."""
        return get_model_state_dict(self.model, options=_FULL)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        by_name = get_optimizer_state_dict(self.model, optimizer, options=_FULL)
        if not by_name:  # gathered onto rank 0 only, which saves it
            return {}
        return by_index(by_name, _names_in_order(self.model, optimizer))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        by_name = by_names(state, _names_in_order(self.model, optimizer))
        set_optimizer_state_dict(self.model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def gradients_unsynced(net: nn.Module):
    """Accumulate this micro-batch's gradients locally: no all-reduce (DDP) or reduce-scatter (FSDP)."""
    if isinstance(net, FSDPModule):
        return _fsdp_unsynced(net)
    return net.no_sync()


@contextlib.contextmanager
def _fsdp_unsynced(net: FSDPModule):
    net.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)


def _names_in_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter names in the optimizer's order: the numbering `optimizer.state_dict()` uses."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def by_index(state: dict, names: list[str]) -> dict:
    """An optimizer state keyed by parameter name -> keyed by number, as a plain run saves it."""
    number = {name: i for i, name in enumerate(names)}
    return {
        "state": {number[name]: s for name, s in state["state"].items()},
        "param_groups": [{**g, "params": [number[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def by_names(state: dict, names: list[str]) -> dict:
    """The inverse of `by_index`."""
    if len(names) != sum(len(g["params"]) for g in state["param_groups"]):
        raise UserError(
            "the checkpoint's optimizer state is for a different set of trainable parameters "
            "(other --freeze-layers?); start a new run from its weights with --restore-from PATH"
        )
    return {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
