"""A training run's state: what `finetune` builds once, carries from step to step, saves and restores.

`start_run` does all the set-up (starting point, model, data, precision, optimizer, a resumed
state) and returns a `Run`; the loop (loop.py) only steps it. Everything a resume needs to be
exact is in `Run.training_state()`: optimizer moments, the sampler's and dropout's RNG streams of
every process, the step, the running loss average.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .. import durable
from ..adapters.peft import adapter_base
from ..config import GPTConfig
from ..data.tokens import check_ids
from ..devices import cpu_has_fast_bf16
from ..errors import UserError
from ..formats import build_model, newest_step, read_checkpoint, resolve_run_folder, run_steps
from ..hub import resolve_model_path
from ..model import GPT
from ..tokenizer import Tokenizer, gpt2_tokenizer
from .checkpoint import STATE_FILE, load_training_state, save_checkpoint
from .dataset import prepare_dataset
from .distributed import barrier
from .lora import attach_lora, lora_precision, lora_summary, write_lora_step
from .metrics import plot_losses, truncate_metrics
from .optimizer import freeze, make_optimizer, total_steps
from .options import TrainOptions
from .precision import MASTER_WEIGHTS, Precision, PrecisionPlan, make_precision, plan_precision
from .sampler import WindowSampler
from .sharding import Sharded, shard

log = logging.getLogger("gpt2kit")


@dataclass
class Run:
    """One training run between steps. `model` is the plain module (evaluated, sampled, saved);
    `net` is what a step calls: the model, compiled and/or wrapped by DDP."""

    opts: TrainOptions
    name: str
    run_dir: Path
    device: torch.device
    rank: int
    world: int
    config: GPTConfig
    tokenizer: Tokenizer
    model: GPT
    precision: Precision
    optimizer: torch.optim.Optimizer
    sampler: WindowSampler
    val_tokens: np.ndarray | None
    window: int
    steps: int  # the total to reach; a resumed run continues to the same end
    net: nn.Module | None = None
    base: str | None = None  # a LoRA run's base model folder; None for full fine-tuning
    step: int = 0
    elapsed: float = 0.0  # seconds spent inside steps, summed across resumes
    avg: list[float] = field(default_factory=lambda: [0.0, 0.0])  # decayed loss sum, decayed count
    resumed: bool = False
    # Throughput since the last log line (not saved: a resumed run starts a new interval).
    interval_start: float = field(default_factory=time.time)
    interval_tokens: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tokens_per_step(self) -> int:
        return self.opts.batch_size * self.world * self.opts.accumulate_gradients * self.sampler.T

    def training_state(self) -> dict:
        """Everything an exact resume needs. Collective under DDP: every rank must call it."""
        rng = [torch.get_rng_state()]
        samplers = [self.sampler.state_dict()]
        if self.world > 1:  # every rank's streams, gathered so a resume restores each one
            rng_all, samplers_all = [None] * self.world, [None] * self.world
            dist.all_gather_object(rng_all, rng[0])
            dist.all_gather_object(samplers_all, samplers[0])
            rng, samplers = rng_all, samplers_all
        cuda = [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []
        return {
            "optimizer": self.precision.optimizer_state(self.optimizer),
            "sampler": samplers,
            "step": self.step,
            "elapsed": self.elapsed,
            "avg": self.avg,
            "total_steps": self.steps,
            "options": self.opts.to_dict(),
            "scaler": self.precision.state_dict(),
            "rng": {"torch": rng, "cuda": cuda},
        }

    def save(self) -> Path:
        """A complete step folder (the fp32 weights and the training state). Collective under DDP."""
        state = self.training_state()
        # The full weights (under --fsdp gathered from every process, so all of them call this); LoRA saves its adapter.
        full = self.precision.weights() if self.opts.lora_rank is None else None
        folder = self.run_dir / f"step-{self.step:06d}"
        if self.is_main:
            config = self.config.replace(dropout=0.0)
            if self.opts.lora_rank is None:
                weights = {"model_state": full}
            else:  # the adapter, in PEFT's format
                weights = {"write_weights": lambda d: write_lora_step(d, config, self.model, self.opts, self.base)}
            folder = save_checkpoint(
                self.run_dir,
                self.step,
                config=config,
                tokenizer=self.tokenizer,
                training_state=state,
                max_checkpoints=self.opts.max_checkpoints,
                **weights,
            )
            plot_losses(self.run_dir, title=self.name)
        barrier()
        return folder

    def restore(self, state: dict) -> None:
        """Continue from a saved training state, this process's own streams where every rank's were saved."""

        def mine(items: list):
            return items[self.rank] if self.rank < len(items) else items[0]

        self.precision.load_optimizer_state(self.optimizer, state["optimizer"])
        self.sampler.load_state_dict(mine(state["sampler"]))
        torch.set_rng_state(mine(state["rng"]["torch"]))
        if self.device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state(state["rng"]["cuda"][min(self.rank, len(state["rng"]["cuda"]) - 1)])
        self.precision.load_state_dict(state.get("scaler"))
        self.step, self.elapsed, self.avg = state["step"], state["elapsed"], list(state["avg"])
        self.resumed = True


def start_run(
    *, dataset, model_name, run_name: str, opts: TrainOptions, device: torch.device, rank: int, world: int
) -> Run:
    """Set a run up: from its newest step (resume), a given checkpoint, a model, or from scratch."""
    is_main = rank == 0
    run_dir = Path(opts.checkpoint_dir) / run_name
    if is_main:
        durable.check_writable(run_dir)  # a read-only folder fails now, not at the first save
    start = _starting_point(model_name, run_dir, opts)
    config, tokenizer, state, source = start.config, start.tokenizer, start.state, start.source
    if opts.dropout != config.dropout:
        config = config.replace(dropout=opts.dropout)
    torch.manual_seed(opts.seed + rank)  # dropout's stream; restored exactly on resume
    model = _build_model(config, start.state_dict, source, opts, device)
    window = _window(opts, config, is_main)
    train_tokens, val_tokens = _read_data(dataset, opts, tokenizer, config, window, is_main)
    if is_main:
        _prepare_run_dir(run_dir, run_name, opts, replaces_run=start.replaces_run)
    sampler = WindowSampler(
        train_tokens,
        window,
        opts.batch_size,
        seed=opts.seed,
        rank=rank,
        world_size=world,
        noise=opts.noise,
        n_vocab=config.n_vocab,
    )
    steps = total_steps(opts, train_tokens.size, sampler.T, world)
    storage, plan = _plan(model, opts, device, start.adapter)
    precision = _precision(model, plan, opts, device, is_main)
    optimizer = make_optimizer(precision.parameters(), opts, device)
    run = Run(
        opts=opts,
        name=run_name,
        run_dir=run_dir,
        device=device,
        rank=rank,
        world=world,
        config=config,
        tokenizer=tokenizer,
        model=model,
        precision=precision,
        optimizer=optimizer,
        sampler=sampler,
        val_tokens=val_tokens,
        window=window,
        steps=steps,
        base=start.base,
    )
    if state is not None:
        run.restore(state)
    if is_main:
        _announce(run, source, storage, resumed=state is not None)
    run.net = _network(model, opts, device, world)
    return run


def _network(model: GPT, opts: TrainOptions, device: torch.device, world: int):
    """What a step calls: the model, compiled with --compile, wrapped by DDP across processes (not under FSDP)."""
    net = torch.compile(model) if opts.compile else model
    if world > 1 and not opts.fsdp:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return net


def _plan(model: GPT, opts: TrainOptions, device: torch.device, adapter) -> tuple:
    """(LoRA storage dtype or None, precision plan); a LoRA run gets its adapters here."""
    if opts.lora_rank is None:
        return None, plan_precision(opts.dtype, device)
    storage, plan = lora_precision(opts, device)
    attach_lora(model, opts, storage, adapter)
    return storage, plan


def _window(opts: TrainOptions, config, is_main: bool) -> int:
    """The training window: --context-length, at most the model's context."""
    if opts.context_length and opts.context_length > config.n_ctx and is_main:
        log.warning(
            "--context-length %d is more than the model's context of %d: training on %d-token windows",
            opts.context_length,
            config.n_ctx,
            config.n_ctx,
        )
    return min(opts.context_length or config.n_ctx, config.n_ctx)


def _prepare_run_dir(run_dir: Path, run_name: str, opts: TrainOptions, *, replaces_run: bool) -> None:
    if opts.sample_every:  # samples are written during training: a bad folder must fail now, not at step N
        durable.check_writable(Path(opts.sample_dir) / run_name)
    if replaces_run:  # --overwrite: the new run's model and data were read without error
        log.info("--overwrite: deleting the old run in %s", run_dir)
        shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)


def _announce(run: Run, source, storage, *, resumed: bool) -> None:
    """Log where the run starts, and drop metrics rows past it (an attempt killed before its save)."""
    if resumed:
        log.info("resuming from %s at step %d", source, run.step)
        truncate_metrics(run.run_dir, run.step)
        return
    truncate_metrics(run.run_dir, 0)  # rows of an attempt killed before its first save
    plan = run.precision.plan.describe()
    log.info("starting from %s (%s parameters, %s)", source, f"{run.model.num_params():,}", plan)
    if run.opts.lora_rank is not None:
        log.info("%s", lora_summary(run.model, run.opts, storage))


def _precision(model: GPT, plan: PrecisionPlan, opts: TrainOptions, device: torch.device, is_main: bool) -> Precision:
    """How the model trains in its dtype; under --fsdp, sharded first (the optimizer then sees the shards)."""
    if plan.mode == MASTER_WEIGHTS and is_main and not cpu_has_fast_bf16():
        log.warning(
            "this CPU has no native bf16 (AVX512-BF16 or AMX): PyTorch emulates it, many times slower "
            "than --dtype float32"
        )
    if not opts.fsdp:
        return make_precision(model, plan, device)
    if not dist.is_initialized():
        raise UserError(
            "--fsdp shards a model across the processes of a torchrun launch: run "
            "`torchrun --nproc_per_node N -m gpt2kit finetune ... --fsdp`"
        )
    shard(model, plan)
    return Sharded(model, plan, device)


@dataclass
class Start:
    """Where a run starts: a model's shape and weights, and a saved training state to resume."""

    config: GPTConfig
    state_dict: dict | None
    tokenizer: Tokenizer
    state: dict | None
    source: str  # where it came from, for people
    base: str | None = None  # a LoRA run's base model folder (the adapter's base_model_name_or_path)
    adapter: Path | None = None  # a LoRA run's saved adapter to continue
    replaces_run: bool = False  # --overwrite of a run folder that holds a run: deleted once the inputs are read


def _starting_point(model_name, run_dir: Path, opts: TrainOptions) -> Start:
    replaces = False
    if opts.restore_from == "latest":
        folder = newest_step(run_dir)
        if folder is not None:
            return _resume(folder, run_dir, opts)
    elif opts.restore_from == "fresh":
        replaces = _check_replaceable(run_dir, opts)
    else:
        folder = resolve_model_path(opts.restore_from)
        if newest_step(run_dir) is not None and folder.resolve().is_relative_to(run_dir.resolve()):
            return _resume(_own_newest_step(folder, run_dir), run_dir, opts)
        replaces = _check_replaceable(run_dir, opts)
        state = load_training_state(resolve_run_folder(folder))
        if state is not None and state["options"].get("lora_rank") != opts.lora_rank:
            state = None  # LoRA on a full run's weights (or the reverse): the weights, not the optimizer
        return dataclasses.replace(_from_folder(folder, opts, state), replaces_run=replaces)
    if opts.from_scratch:
        tok = gpt2_tokenizer()
        return Start(_scratch_config(opts, tok.n_vocab), None, tok, None, "from scratch", replaces_run=replaces)
    ck = read_checkpoint(resolve_model_path(model_name))
    return Start(
        ck.config, ck.state_dict, ck.tokenizer, None, str(ck.path), base=_absolute(ck.path, opts), replaces_run=replaces
    )


def _resume(folder: Path, run_dir: Path, opts: TrainOptions) -> Start:
    """Continue the run in `run_dir` from its newest step `folder`, with that step's training state."""
    if not (folder / STATE_FILE).is_file():
        raise UserError(
            f"{folder} holds a model but no {STATE_FILE}, so the run cannot resume from it; "
            f"fine-tune its weights as a new run with --restore-from {folder} --run-name NEW"
        )
    state = load_training_state(folder)
    if (state["options"].get("lora_rank") is None) != (opts.lora_rank is None):
        kind = "a full fine-tuning run" if opts.lora_rank is not None else "a LoRA run"
        raise UserError(
            f"{run_dir} is {kind}: resume it with its own --lora-rank setting, or start "
            f"a new --run-name with --restore-from {folder}"
        )
    return _from_folder(folder, opts, state)


def _own_newest_step(folder: Path, run_dir: Path) -> Path:
    """`--restore-from` names a step of the run being started (or the run folder itself): its newest step is
    a resume, whatever --overwrite says (deleting the run would delete the step); an older one would have
    the run's later steps overwritten as it trains past them, so it goes into a new --run-name instead."""
    step = resolve_run_folder(folder).resolve()
    newest = newest_step(run_dir).resolve()
    number = _step_number(step)
    later = sorted(p.name for p in run_steps(run_dir) if _step_number(p) > (number or 0))
    if step != newest or later:
        beyond = f" ({', '.join(later)})" if later else ""
        raise UserError(
            f"{folder} is a step of {run_dir}, whose later steps{beyond} would be overwritten: restore "
            f"it into a new --run-name (or --restore-from latest to continue the run)"
        )
    return newest


def _step_number(folder: Path) -> int | None:
    m = re.fullmatch(r"step-(\d+)", folder.name)
    return int(m.group(1)) if m else None


def _check_replaceable(run_dir: Path, opts: TrainOptions) -> bool:
    """Whether a run started afresh (or from another checkpoint) replaces one in its folder, which needs
    --overwrite. The old run is deleted only once the new one's inputs have all been read (start_run)."""
    if newest_step(run_dir) is None:
        return False
    if not opts.overwrite:
        raise UserError(
            f"{run_dir} already holds a run; pass --overwrite to start it again, "
            f"or a new --run-name (or --restore-from latest to continue it)"
        )
    return True


def _from_folder(folder: Path, opts: TrainOptions, state: dict | None) -> Start:
    """A step or model folder; a LoRA step folder (an adapter) brings its base's weights."""
    found = adapter_base(folder)
    if found is None:
        ck = read_checkpoint(folder)
        return Start(ck.config, ck.state_dict, ck.tokenizer, state, str(ck.path), base=_absolute(ck.path, opts))
    if opts.lora_rank is None:
        raise UserError(
            f"{found[0]} is a LoRA adapter: continue it with --lora-rank, or `gpt2kit merge` it "
            f"into its base first to fine-tune every weight"
        )
    ck = read_checkpoint(resolve_model_path(found[1]))
    return Start(ck.config, ck.state_dict, ck.tokenizer, state, str(found[0]), base=found[1], adapter=found[0])


def _absolute(path: Path, opts: TrainOptions) -> str | None:
    """The base a LoRA run's adapter names (absolute, so the run resumes from any directory)."""
    return str(Path(path).resolve()) if opts.lora_rank is not None else None


def _scratch_config(opts: TrainOptions, n_vocab: int) -> GPTConfig:
    """--from-scratch: a new model of the shape the options give."""
    return GPTConfig(n_vocab=n_vocab, n_ctx=opts.n_ctx, n_embd=opts.n_embd, n_head=opts.n_head, n_layer=opts.n_layer)


def _build_model(config: GPTConfig, state_dict, source: str, opts: TrainOptions, device: torch.device) -> GPT:
    """The fp32 model on `device`, initialised from `opts.seed` when there are no weights to load."""
    if state_dict is None:
        model = GPT(config)
        model.init_weights(torch.Generator().manual_seed(opts.seed))
    else:
        # A LoRA base is never written to, so it can be the state dict's own tensors: held once, not twice.
        frozen = opts.lora_rank is not None
        model = build_model(config, state_dict, source, share=frozen)
        if frozen:
            state_dict.clear()
    model.to(device)
    model.gradient_checkpointing = opts.gradient_checkpointing
    freeze(model, opts)
    return model


def _read_data(dataset, opts: TrainOptions, tokenizer: Tokenizer, config: GPTConfig, window: int, is_main: bool):
    """(train tokens, validation tokens or None), checked against the model's vocabulary."""
    train_tokens, val_tokens = prepare_dataset(dataset, opts, tokenizer, is_main)
    if train_tokens.size < 2:
        raise UserError("the training dataset is empty: encode some text first (`gpt2kit encode`)")
    for name, tokens in (("dataset", train_tokens), ("validation data", val_tokens)):
        if tokens is not None:
            check_ids(tokens, config.n_vocab, f"the {name}")
    if train_tokens.size - 1 < window and is_main:
        log.warning(
            "the dataset has %d tokens, fewer than the context of %d: training on %d-token windows",
            train_tokens.size,
            window,
            train_tokens.size - 1,
        )
    return train_tokens, val_tokens
