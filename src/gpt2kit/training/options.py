"""Every fine-tuning option and its default, in one place (the CLI reads its defaults from here)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from ..adapters.names import parse_targets
from ..errors import UserError
from ..options import DTYPE_NAMES, INT8, SamplingSettings

TRAIN_DTYPES = ("auto", *DTYPE_NAMES)  # what a training step can compute in
SAMPLING = {f.name for f in dataclasses.fields(SamplingSettings)}  # sample_<name> options with these names sample


@dataclass(frozen=True)
class TrainOptions:
    # length of training
    steps: int | None = None  # the total to reach (resuming continues to the same end); None: DEFAULT_STEPS
    epochs: float | None = None  # or: passes over the training tokens
    # batch and optimiser
    batch_size: int = 2  # windows per step on each process
    context_length: int | None = None  # window length; default the model's n_ctx
    learning_rate: float = 1e-4  # gpt-2-simple's and nshepperd's default for fine-tuning
    accumulate_gradients: int = 1
    optimizer: str = "adamw"  # adamw | adam | sgd
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine | linear (decay to 10% at the last step)
    grad_clip: float = 1.0  # 0 = off
    dropout: float = 0.0
    noise: float = 0.0  # nshepperd's --noise: probability of replacing an input token by a random one
    seed: int = 1234
    # memory and speed
    gradient_checkpointing: bool = False
    only_train_transformer_layers: bool = False
    freeze_layers: int = 0
    # auto | float32 | bfloat16 | float16. auto: bf16 where the hardware has it natively, else fp32. On a CPU,
    # bfloat16 runs the model in bf16 over fp32 master weights; on a GPU, autocast (precision.py says why).
    dtype: str = "auto"
    compile: bool = False
    device: str = "auto"
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state across processes (sharding.py)
    # LoRA (adapters/): train rank-r adapters on a frozen base instead of every weight; None = full fine-tuning.
    # The base is stored in --dtype (bf16/fp16 halve it; auto on a CPU: half width, lora.frozen_base_dtype); on a
    # CPU it computes in fp32, on a GPU under autocast.
    lora_rank: int | None = None
    lora_alpha: float | None = None  # the update is scaled by alpha / rank; default: alpha = rank (scale 1)
    lora_dropout: float = 0.0
    lora_targets: str = "c_attn,c_proj,c_fc"  # PEFT's names: c_proj is both attn.c_proj and mlp.c_proj
    # from scratch
    from_scratch: bool = False
    n_layer: int = 6
    n_embd: int = 384
    n_head: int = 6
    n_ctx: int = 256
    # run folder
    checkpoint_dir: str = "checkpoint"
    run_name: str = "run1"  # the run's folder under checkpoint_dir (and sample_dir)
    restore_from: str = "latest"  # latest | fresh | PATH
    overwrite: bool = False
    save_every: int = 500
    max_checkpoints: int = 3
    # samples, validation, logging
    sample_every: int = 0  # 0 = off
    sample_length: int = 100
    sample_num: int = 1
    sample_prefix: str | None = None
    sample_temperature: float = 1.0
    sample_top_k: int = 40  # gpt-2-simple's samples during training
    # The samples' other samplers (GenerateOptions.SAMPLERS, each off by default), as sample_<name>.
    sample_top_p: float = SamplingSettings.top_p
    sample_repetition_penalty: float = SamplingSettings.repetition_penalty
    sample_min_p: float = SamplingSettings.min_p
    sample_typical_p: float = SamplingSettings.typical_p
    sample_epsilon_cutoff: float = SamplingSettings.epsilon_cutoff
    sample_eta_cutoff: float = SamplingSettings.eta_cutoff
    sample_top_n_sigma: float = SamplingSettings.top_n_sigma
    sample_mirostat: int = SamplingSettings.mirostat
    sample_mirostat_tau: float = SamplingSettings.mirostat_tau
    sample_mirostat_eta: float = SamplingSettings.mirostat_eta
    sample_dry_multiplier: float = SamplingSettings.dry_multiplier
    sample_dry_base: float = SamplingSettings.dry_base
    sample_dry_allowed_length: int = SamplingSettings.dry_allowed_length
    sample_dry_penalty_last_n: int = SamplingSettings.dry_penalty_last_n
    sample_dry_sequence_breakers: tuple[str, ...] = SamplingSettings.dry_sequence_breakers
    sample_xtc_threshold: float = SamplingSettings.xtc_threshold
    sample_xtc_probability: float = SamplingSettings.xtc_probability
    sample_penalty_alpha: float = SamplingSettings.penalty_alpha
    sample_dir: str = "samples"
    val_dataset: str | None = None
    val_fraction: float = 0.0
    val_every: int = 100
    val_batch_count: int = 20
    print_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        self._check_finite()
        self._check_run_name()
        if self.steps is not None and self.epochs is not None:
            raise UserError(
                f"give --steps or --epochs, not both (got --steps {self.steps} and --epochs "
                f"{self.epochs}): --steps is the total to reach, --epochs counts it from the data"
            )
        positive = [
            "batch_size",
            "accumulate_gradients",
            "save_every",
            "max_checkpoints",
            "val_every",
            "val_batch_count",
            "print_every",
            "n_layer",
            "n_embd",
            "n_head",
            "n_ctx",
            "sample_num",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"steps must be at least 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise UserError(f"epochs must be positive, got {self.epochs}")
        if not self.learning_rate > 0:
            raise UserError(f"learning-rate must be positive, got {self.learning_rate}")
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise UserError(f"optimizer must be adamw, adam or sgd, got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise UserError(f"lr-schedule must be constant, cosine or linear, got {self.lr_schedule!r}")
        if not 0 <= self.noise < 1 or not 0 <= self.dropout < 1:
            raise UserError("noise and dropout must be in [0, 1)")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"val-fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("warmup_steps", "freeze_layers", "sample_every", "grad_clip", "weight_decay", "sample_length"):
            if not getattr(self, name) >= 0:  # NaN too
                raise UserError(f"{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.fsdp and self.lora_rank is not None:
            raise UserError(
                "--fsdp shards full fine-tuning; LoRA trains a few adapters on a frozen base and needs no "
                "sharding: drop --fsdp (torchrun alone gives LoRA data parallelism)"
            )
        if self.dtype not in TRAIN_DTYPES:
            hint = " (int8 is for running a model on a CPU, not for training)" if self.dtype == INT8 else ""
            raise UserError(f"unknown --dtype {self.dtype!r} for fine-tuning{hint}: use {', '.join(TRAIN_DTYPES)}")
        if self.context_length is not None and self.context_length < 2:
            raise UserError(f"context-length must be at least 2, got {self.context_length}")
        self._check_lora()
        try:  # the samples' settings: checked now, not at the first sample hundreds of steps in
            self.sampling()
        except UserError as e:
            raise UserError(f"in the training samples' settings: {e}") from None

    def sampling(self) -> SamplingSettings:
        """The training samples' settings: every sample_<name> option is SamplingSettings' <name>."""
        return SamplingSettings(
            **{
                f.name.removeprefix("sample_"): getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name.startswith("sample_") and f.name.removeprefix("sample_") in SAMPLING
            }
        )

    def _check_finite(self) -> None:
        """Every float option, read from the fields so a new one is covered too: inf or NaN would pass the
        range checks below (inf > 0) and train to a NaN loss, or a checkpoint of NaN weights."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{f.name.replace('_', '-')} must be a finite number, got {value}")

    def _check_run_name(self) -> None:
        """One plain folder name: the run's folder is checkpoint_dir/run_name (and sample_dir/run_name), so
        `..`, a path or an empty name would put it, and --overwrite's deletion, outside its own folder."""
        name = self.run_name
        seps = [sep for sep in ("/", "\\", os.sep, os.altsep) if sep]
        if name in ("", ".", "..") or any(sep in name for sep in seps) or "\0" in name:
            raise UserError(
                f"run-name must be one plain folder name (not empty, '.' or '..', and no '/' or '\\'), "
                f"got {name!r}; the run goes in --checkpoint-dir/RUN-NAME"
            )

    def _check_lora(self) -> None:
        if self.lora_rank is None:
            return
        if self.lora_rank < 1:
            raise UserError(f"lora-rank must be at least 1, got {self.lora_rank} (leave it out for full fine-tuning)")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise UserError(f"lora-alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"lora-dropout must be in [0, 1), got {self.lora_dropout}")
        parse_targets(self.lora_targets)
        if self.from_scratch:
            raise UserError("--lora-rank adapts a trained model: it cannot start --from-scratch")
        if self.freeze_layers or self.only_train_transformer_layers:
            raise UserError(
                "with --lora-rank the whole base is frozen already: leave out --freeze-layers and "
                "--only-train-transformer-layers"
            )

    @property
    def lora_scale_alpha(self) -> float:
        """lora_alpha, or the rank when it is not given (scale 1, as PEFT's defaults r=8, alpha=8)."""
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)

    @classmethod
    def from_kwargs(cls, **options) -> "TrainOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UserError(f"unknown fine-tuning option(s): {', '.join(unknown)}")
        return cls(**options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_STEPS = 1000
