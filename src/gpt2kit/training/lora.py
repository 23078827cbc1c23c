"""LoRA inside a training run: the frozen base, the adapter that trains, its precision, its checkpoints.

A LoRA run's step folder is an adapter folder in PEFT's format (adapter_config.json +
adapter_model.safetensors, with base_model_name_or_path naming the base's folder) plus the base's
config.json and vocabulary (so the folder names its model's shape, and counts as a step for
formats.newest_step) and training_state.pt. Resuming reads the base again from the folder the
adapter names, freezes it the same way and loads the saved adapter and optimizer state into it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from ..adapters.lora import LoraSpec, adapter_of, apply_adapter, freeze_base, new_adapter
from ..adapters.names import parse_targets
from ..adapters.peft import read_adapter, write_adapter
from ..config import GPTConfig
from ..cpu.features import CpuInfo, detect
from ..devices import resolve_dtype
from ..errors import UserError
from .options import TrainOptions
from .precision import FP32, PrecisionPlan, plan_precision


def lora_spec(opts: TrainOptions) -> LoraSpec:
    return LoraSpec(
        rank=opts.lora_rank,
        alpha=opts.lora_scale_alpha,
        dropout=opts.lora_dropout,
        targets=parse_targets(opts.lora_targets),
    )


def lora_precision(
    opts: TrainOptions, device: torch.device, cpu: CpuInfo | None = None
) -> tuple[torch.dtype, PrecisionPlan]:
    """(the frozen base's storage dtype, how steps compute): --dtype names the first.

    On a CPU the arithmetic stays fp32 (the adapters are fp32 and the base is widened per product,
    since bf16 arithmetic is emulated on CPUs without AVX512-BF16/AMX), so `auto` stores the base at
    half width whatever the CPU (frozen_base_dtype); on a GPU, autocast as usual. `cpu`: tests inject one.
    """
    if opts.dtype == "int8":
        raise UserError("--dtype int8 is for generation; a LoRA base trains in float32, bfloat16 or float16")
    if device.type == "cpu":
        storage = frozen_base_dtype(cpu or detect()) if opts.dtype == "auto" else resolve_dtype(opts.dtype, device, cpu)
        return storage, PrecisionPlan(torch.float32, FP32)
    return resolve_dtype(opts.dtype, device), plan_precision(opts.dtype, device)


def frozen_base_dtype(cpu: CpuInfo) -> torch.dtype:
    """`--dtype auto`'s storage for a frozen LoRA base on a CPU that computes in fp32: always half width.

    float16 where the CPU widens it in hardware (x86 F16C, every aarch64), else bfloat16 (widening it
    is a 16-bit shift on any CPU). Both widen at the speed of a copy (measured on the 2-core AVX2 EPYC:
    28.4 and 28.8 ms for a 3072 x 768 matrix, 134 ms for its 256-token product), and fp16 keeps 3 more
    mantissa bits: GPT-2's weights rounded to fp16 are 8x closer to fp32 than in bf16 (max error 3.1e-4
    against 2.4e-3 of the largest weight). A matrix beyond fp16's range is kept in bf16 (FrozenLinear).
    """
    if "f16c" in cpu.flags or cpu.machine in ("aarch64", "arm64"):
        return torch.float16
    return torch.bfloat16


def attach_lora(model: nn.Module, opts: TrainOptions, storage: torch.dtype, adapter_dir: Path | None) -> None:
    """Freeze `model` (its matrices stored in `storage`) and wrap the targeted ones with a trainable
    adapter: a new one (B = 0, A from --seed), or the one saved in `adapter_dir` when resuming."""
    spec = lora_spec(opts)
    fresh = new_adapter(model.config, spec, torch.Generator().manual_seed(opts.seed))
    adapter = fresh
    if adapter_dir is not None:
        adapter = read_adapter(adapter_dir, model.config)
        _same_shape(adapter_dir, adapter, fresh)
        adapter.spec = spec
    freeze_base(model, storage)
    apply_adapter(model, adapter, trainable=True)


def lora_summary(model: nn.Module, opts: TrainOptions, storage: torch.dtype) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (
        f"LoRA rank {opts.lora_rank} on {opts.lora_targets}: {trainable:,} trainable parameters; "
        f"the base frozen in {str(storage).removeprefix('torch.')}"
    )


def _same_shape(folder: Path, saved, fresh) -> None:
    same = saved.modules.keys() == fresh.modules.keys() and all(
        saved.modules[k].A.shape == w.A.shape and abs(saved.modules[k].scaling - w.scaling) < 1e-9
        for k, w in fresh.modules.items()
    )
    if not same:
        raise UserError(
            f"{folder} holds an adapter of another rank, alpha or targets than --lora-rank/--lora-alpha/"
            f"--lora-targets ask for: pass the run's own settings, or a new --run-name"
        )


def write_lora_step(folder: Path, config: GPTConfig, model: nn.Module, opts: TrainOptions, base: str) -> None:
    """A LoRA step folder's weights: the adapter (PEFT's format) and the base's config.json."""
    write_adapter(folder, adapter_of(model, lora_spec(opts)), base_model=base)
    (folder / "config.json").write_text(json.dumps(config.to_hf_config(), indent=2) + "\n")
