"""How a training step runs in its dtype: fp32, autocast (GPUs), or bf16 weights with fp32 masters (CPUs).

On a CPU with native bf16 (AVX512-BF16 or AMX), autocast is the wrong tool. It keeps the weights in
fp32 and casts every one to bf16 again at each forward, and it keeps the residual stream, the
LayerNorms and the gradients in fp32, converting back and forth around every matmul. Issue 11
measured gpt2kit's autocast fine-tuning at the speed of transformers' autocast (290 against 297
tokens/s) on a CPU whose bf16 matmuls ran 2.4x faster than its fp32 ones.

So on a CPU the module itself is bf16 (weights, activations, matmuls, gradients), and fp32 copies
of its weights, the masters, are what the optimizer updates: mixed-precision training with master
weights (Micikevicius et al. 2018, "Mixed Precision Training"). Each step widens the bf16 gradients
onto the masters, clips and steps them with fp32 optimizer moments, and rounds the masters back into
the module. Updates of 1e-4 x a weight would vanish if added to bf16 weights (8 bits of mantissa);
on the fp32 masters they add up. Checkpoints hold the masters, so the saved folder is the fp32
model and a resumed run rounds the same masters into the same bf16 module: resuming stays exact.

On CUDA, autocast stays: casts are cheap against a GPU's bandwidth, and fp16 needs its GradScaler.
Where the CPU has no native bf16, `--dtype auto` means fp32 (devices.auto_dtype): PyTorch then
emulates bf16, dozens of times slower than fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..cpu.features import CpuInfo
from ..devices import resolve_dtype
from ..errors import UserError

FP32, AUTOCAST, MASTER_WEIGHTS = "fp32", "autocast", "bf16 weights, fp32 masters"


@dataclass(frozen=True)
class PrecisionPlan:
    """Which dtype a training run computes in, and how (one of FP32, AUTOCAST, MASTER_WEIGHTS)."""

    dtype: torch.dtype
    mode: str

    def describe(self) -> str:
        return f"autocast to {str(self.dtype).removeprefix('torch.')}" if self.mode == AUTOCAST else self.mode


def plan_precision(dtype: str, device: torch.device, cpu: CpuInfo | None = None) -> PrecisionPlan:
    """`--dtype` -> how training runs; 'auto' follows devices.auto_dtype (bf16 only where it is native).

    A pure function of its arguments: tests pass any CPU family as `cpu`.
    """
    dt = resolve_dtype(dtype, device, cpu)
    if dt == torch.float32:
        return PrecisionPlan(dt, FP32)
    if dt == torch.float16 and device.type != "cuda":
        raise UserError("float16 mixed precision needs a CUDA GPU; use --dtype bfloat16 or float32 here")
    if device.type == "cpu":
        return PrecisionPlan(dt, MASTER_WEIGHTS)
    return PrecisionPlan(dt, AUTOCAST)


class Precision:
    """fp32, or autocast: the optimizer updates the module's own (fp32) parameters."""

    def __init__(self, model: nn.Module, plan: PrecisionPlan, device: torch.device):
        self.model, self.plan, self.device = model, plan, device
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler("cuda") if plan.dtype == torch.float16 else None

    def parameters(self) -> list[torch.Tensor]:
        """What the optimizer updates, in the module's parameter order (so optimizer states interchange)."""
        return list(self.model.parameters())

    def autocast(self):
        if self.plan.mode == AUTOCAST:
            return torch.autocast(self.device.type, dtype=self.plan.dtype)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
        """Clip, step and zero the gradients of one optimizer step."""
        self._clip_and_step(optimizer, grad_clip)
        optimizer.zero_grad(set_to_none=True)

    def _clip_and_step(self, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if grad_clip:
            clip_gradients(self.parameters(), grad_clip)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint stores."""
        return self.model.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state as checkpoints store it (parameters numbered in optimizer order)."""
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class MasterWeights(Precision):
    """The module in bf16; fp32 masters, one per parameter, are what the optimizer updates."""

    def __init__(self, model: nn.Module, plan: PrecisionPlan, device: torch.device):
        super().__init__(model, plan, device)
        # Every parameter gets a master, frozen ones too, so a checkpoint saves their fp32 values untouched.
        self.masters = {
            name: nn.Parameter(p.detach().float().clone(), requires_grad=p.requires_grad)
            for name, p in model.named_parameters()
        }
        model.to(plan.dtype)  # rounds to nearest, as the copy after every step does

    def parameters(self) -> list[torch.Tensor]:
        return list(self.masters.values())

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
        for name, p in self.model.named_parameters():
            master = self.masters[name]
            if p.grad is None:
                master.grad = None
                continue
            # Accumulated in bf16 by autograd (and DDP's all-reduce), widened once into fp32 buffers kept
            # from step to step (for 124M, 500 MB that would otherwise be fresh pages every step).
            if master.grad is None:
                master.grad = torch.empty_like(master)
            master.grad.copy_(p.grad)
            p.grad = None
        self._clip_and_step(optimizer, grad_clip)  # the masters, in fp32
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                p.copy_(self.masters[name])  # fp32 -> bf16, round to nearest even

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: m.detach() for name, m in self.masters.items()}


def clip_gradients(parameters: list[torch.Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_, bit for bit, without its pass over every gradient when nothing is clipped.

    clip_grad_norm_ multiplies every gradient by min(1, max_norm / (norm + 1e-6)) even when that is 1, to spare
    a GPU the sync an `if` needs; on a CPU that is a read and a write of every gradient (1 GB for 124M) that
    changes no bit. Where the factor is below 1 this calls the same two functions clip_grad_norm_ does.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or grads[0].device.type != "cpu" or not hasattr(torch.nn.utils, "get_total_norm"):  # torch < 2.6
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    norm = torch.nn.utils.get_total_norm(grads)
    if max_norm / (norm + 1e-6) < 1.0:  # the factor clip_grad_norm_ clamps to 1
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)


def make_precision(model: nn.Module, plan: PrecisionPlan, device: torch.device) -> Precision:
    """Prepare `model` (already on `device`, in fp32) for training under `plan`."""
    return (MasterWeights if plan.mode == MASTER_WEIGHTS else Precision)(model, plan, device)
