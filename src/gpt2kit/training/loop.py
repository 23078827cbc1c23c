"""`finetune`: the training loop, resumable to the exact weights, on one process or many (torchrun)."""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..devices import resolve_device, resolve_dtype
from ..errors import UserError
from ..formats import build_model, read_checkpoint
from ..generation import Sample, iter_samples
from ..model import GPT
from ..sampling import SamplingSettings
from ..tokenizer import gpt2_tokenizer
from .checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from .metrics import append_metrics, plot_losses, truncate_metrics
from .options import TrainOptions
from .sampler import WindowSampler, eval_windows
from .setup import (all_reduce_mean, freeze, init_distributed, lr_at, make_optimizer, prepare_dataset,
                    scratch_config, total_steps)

log = logging.getLogger("gpt2kit")


def _train_dtype(opts: TrainOptions, device: torch.device) -> torch.dtype:
    dt = resolve_dtype(opts.dtype, device)
    if dt == torch.float16 and device.type != "cuda":
        raise UserError("float16 mixed precision needs a CUDA GPU; use --dtype bfloat16 or float32 here")
    return dt


def _starting_point(model_name, run_dir: Path, opts: TrainOptions, is_main: bool):
    """-> (config, state_dict or None, tokenizer, training state or None, where it came from)."""
    from ..hub import resolve_model_path
    if opts.restore_from == "latest":
        folder = latest_checkpoint(run_dir)
        if folder is not None:
            ck = read_checkpoint(folder)
            return ck.config, ck.state_dict, ck.tokenizer, load_training_state(folder), str(folder)
    elif opts.restore_from == "fresh":
        if latest_checkpoint(run_dir) is not None:
            if not opts.overwrite:
                raise UserError(f"{run_dir} already holds a run; pass --overwrite to start it again, "
                                f"or a new --run-name (or --restore-from latest to continue it)")
            if is_main:
                shutil.rmtree(run_dir)
    else:
        ck = read_checkpoint(resolve_model_path(opts.restore_from))
        return ck.config, ck.state_dict, ck.tokenizer, load_training_state(ck.path), str(ck.path)
    if opts.from_scratch:
        tok = gpt2_tokenizer()
        return scratch_config(opts, tok.n_vocab), None, tok, None, "from scratch"
    ck = read_checkpoint(resolve_model_path(model_name))
    return ck.config, ck.state_dict, ck.tokenizer, None, str(ck.path)


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to save and stop after the current step."""

    def __init__(self):
        self.raised = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.raised = True
        log.warning("%s received: saving a checkpoint after this step (Ctrl-C again to abort without saving)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def finetune(*, dataset, model=None, run_name: str = "run1", **options) -> Path:
    """Fine-tune `model` (default: the bundled model) on `dataset`; returns the final checkpoint folder."""
    opts = TrainOptions.from_kwargs(**options)
    device = resolve_device(opts.device)
    rank, local_rank, world = init_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    is_main = rank == 0
    run_dir = Path(opts.checkpoint_dir) / run_name
    config, state_dict, tokenizer, state, source = _starting_point(model, run_dir, opts, is_main)
    if opts.dropout != config.dropout:
        config = config.replace(dropout=opts.dropout)
    torch.manual_seed(opts.seed + rank)  # dropout's stream; restored exactly on resume
    if state_dict is None:
        raw = GPT(config)
        raw.init_weights(torch.Generator().manual_seed(opts.seed))
    else:
        raw = build_model(config, state_dict, source)
    raw.to(device)
    raw.gradient_checkpointing = opts.gradient_checkpointing
    freeze(raw, opts)
    window = min(opts.context_length or config.n_ctx, config.n_ctx)
    train_tokens, val_tokens = prepare_dataset(dataset, opts, tokenizer, is_main)
    if train_tokens.size < 2:
        raise UserError("the training dataset is empty: encode some text first (`gpt2kit encode`)")
    if int(train_tokens.max()) >= config.n_vocab:
        raise UserError(f"the dataset has token ids up to {int(train_tokens.max())} but the model's vocabulary is {config.n_vocab}")
    if train_tokens.size - 1 < window and is_main:
        log.warning("the dataset has %d tokens, fewer than the context of %d: training on %d-token windows",
                    train_tokens.size, window, train_tokens.size - 1)
    sampler = WindowSampler(train_tokens, window, opts.batch_size, seed=opts.seed, rank=rank, world_size=world,
                            noise=opts.noise, n_vocab=config.n_vocab)
    steps = total_steps(opts, train_tokens.size, sampler.T, world)
    optimizer = make_optimizer(raw, opts, device)
    train_dtype = _train_dtype(opts, device)
    scaler = torch.amp.GradScaler("cuda") if train_dtype == torch.float16 else None
    step, elapsed, avg = 0, 0.0, [0.0, 0.0]
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"][rank] if rank < len(state["sampler"]) else state["sampler"][0])
        torch.set_rng_state(state["rng"]["torch"][rank] if rank < len(state["rng"]["torch"]) else state["rng"]["torch"][0])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state(state["rng"]["cuda"][min(rank, len(state["rng"]["cuda"]) - 1)])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, elapsed, avg = state["step"], state["elapsed"], list(state["avg"])
        if is_main:
            log.info("resuming from %s at step %d", source, step)
            truncate_metrics(run_dir, step)
    elif is_main:
        log.info("starting from %s (%s parameters)", source, f"{raw.num_params():,}")
    net = raw
    if opts.compile:
        net = torch.compile(raw)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (torch.autocast(device.type, dtype=train_dtype) if train_dtype != torch.float32 else contextlib.nullcontext())
    tokens_per_step = opts.batch_size * world * opts.accumulate_gradients * sampler.T

    def training_state() -> dict:
        import torch.distributed as dist
        rng = [torch.get_rng_state()]
        samplers = [sampler.state_dict()]
        if world > 1:  # every rank's streams, gathered so a resume restores each one
            rng_all = [None] * world
            samplers_all = [None] * world
            dist.all_gather_object(rng_all, rng[0])
            dist.all_gather_object(samplers_all, samplers[0])
            rng, samplers = rng_all, samplers_all
        return {"optimizer": optimizer.state_dict(), "sampler": samplers, "step": step, "elapsed": elapsed,
                "avg": avg, "total_steps": steps, "options": opts.to_dict(), "scaler": scaler.state_dict() if scaler else None,
                "rng": {"torch": rng, "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}}

    def save() -> Path:
        st = training_state()  # collective in DDP: every rank takes part
        folder = run_dir / f"step-{step:06d}"
        if is_main:
            folder = save_checkpoint(run_dir, step, config=config.replace(dropout=0.0), model_state=raw.state_dict(),
                                     tokenizer=tokenizer, training_state=st, max_checkpoints=opts.max_checkpoints)
            plot_losses(run_dir, title=f"{run_name}")
        from .setup import barrier
        barrier()
        return folder

    if step >= steps:
        if is_main:
            log.info("the run is already at step %d of %d; raise --steps to train further", step, steps)
        return latest_checkpoint(run_dir) or run_dir
    if is_main and state is None:
        run_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if is_main and opts.progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=step, unit="step", dynamic_ncols=True, desc=run_name)
    last_saved = step if state is not None else -1
    interval_start, interval_tokens = time.time(), 0
    with _StopFlag() as stop:
        while step < steps:
            t0 = time.time()
            lr = lr_at(step, steps, opts)
            for group in optimizer.param_groups:
                group["lr"] = lr
            net.train()
            loss_sum = 0.0
            for micro in range(opts.accumulate_gradients):
                x, y = sampler.next()
                x, y = x.to(device), y.to(device)
                sync = contextlib.nullcontext()
                if world > 1 and micro < opts.accumulate_gradients - 1:
                    sync = net.no_sync()  # all-reduce once per step, not per micro-batch
                with sync:
                    with autocast:
                        logits = net(x)
                        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
                    scaled = loss / opts.accumulate_gradients
                    (scaler.scale(scaled) if scaler else scaled).backward()
                loss_sum += loss.item()
            if scaler:
                scaler.unscale_(optimizer)
            if opts.grad_clip:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), opts.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed += time.time() - t0
            loss_value = all_reduce_mean(loss_sum / opts.accumulate_gradients, device)
            # nshepperd's running average: a decayed sum over a decayed count.
            avg = [avg[0] * 0.99 + loss_value, avg[1] * 0.99 + 1.0]
            interval_tokens += tokens_per_step
            if bar:
                bar.set_postfix(loss=f"{loss_value:.3f}", avg=f"{avg[0] / avg[1]:.3f}",
                                tok_s=f"{interval_tokens / max(time.time() - interval_start, 1e-9):.0f}")
                bar.update(1)
            if is_main and (step % opts.print_every == 0 or step == steps):
                tps = interval_tokens / max(time.time() - interval_start, 1e-9)
                log.info("[%d | %.2f] loss=%.2f avg=%.2f tok/s=%.0f", step, elapsed, loss_value, avg[0] / avg[1], tps)
                append_metrics(run_dir, {"step": step, "elapsed_s": f"{elapsed:.2f}", "loss": f"{loss_value:.4f}",
                                         "avg_loss": f"{avg[0] / avg[1]:.4f}", "lr": f"{lr:.3g}", "tokens_per_s": f"{tps:.0f}"})
                interval_start, interval_tokens = time.time(), 0
            if is_main and val_tokens is not None and val_tokens.size > 1 and (step % opts.val_every == 0 or step == steps):
                val_loss = evaluate(raw, val_tokens, window, opts.batch_size, opts.val_batch_count, device, autocast)
                log.info("[%d | %.2f] val_loss=%.2f ppl=%.1f", step, elapsed, val_loss, math.exp(min(val_loss, 50)))
                append_metrics(run_dir, {"step": step, "elapsed_s": f"{elapsed:.2f}", "val_loss": f"{val_loss:.4f}",
                                         "val_ppl": f"{math.exp(min(val_loss, 50)):.2f}"})
                plot_losses(run_dir, title=run_name)
            if is_main and opts.sample_every and step % opts.sample_every == 0:
                write_samples(raw, tokenizer, opts, run_name, step)
            stopping = all_reduce_mean(float(stop.raised), device) > 0
            if step % opts.save_every == 0 or step == steps or stopping:
                folder = save()
                last_saved = step
                if stopping:
                    if is_main:
                        log.warning("interrupted: saved %s; run the same command again to resume", folder)
                    break
    if bar:
        bar.close()
    if last_saved != step:
        save()
    final = run_dir / f"step-{step:06d}"
    if is_main and not stop.raised:
        log.info("done: %d steps in %.0f s; final checkpoint %s", step, elapsed, final)
    return final


@torch.no_grad()
def evaluate(model: GPT, tokens, window: int, batch_size: int, batches: int, device, autocast=None) -> float:
    """Mean next-token loss over fixed windows of `tokens` (nats/token). Touches no training RNG."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in eval_windows(tokens, window, batch_size, batches):
        with autocast or contextlib.nullcontext():
            logits = model(x.to(device))
        total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.to(device).reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def strided_loss(model: GPT, tokens, window: int, device) -> float:
    """Mean loss over non-overlapping windows covering all of `tokens`: every token scored once."""
    import numpy as np
    model.eval()
    T = min(window, tokens.size - 1)
    total, count = 0.0, 0
    for s in range(0, tokens.size - 1, T):
        chunk = torch.from_numpy(np.asarray(tokens[s:s + T + 1], dtype=np.int64))
        x, y = chunk[:-1].unsqueeze(0).to(device), chunk[1:].unsqueeze(0).to(device)
        total += F.cross_entropy(model(x).float()[0], y[0], reduction="sum").item()
        count += y.numel()
    return total / count


def write_samples(model: GPT, tokenizer, opts: TrainOptions, run_name: str, step: int) -> list[str]:
    """Training-time samples through the one generation path, with their own seeds (never the training RNG)."""
    was_training = model.training
    model.eval()
    texts = [ev.text for ev in iter_samples(model, tokenizer, [opts.sample_prefix], length=opts.sample_length,
                                              settings=SamplingSettings(temperature=1.0, top_k=40), stop=[], seed=opts.seed + step,
                                              nsamples=opts.sample_num, batch_size=opts.sample_num, truncate=None,
                                              include_prefix=True) if isinstance(ev, Sample)]
    model.train(was_training)
    out_dir = Path(opts.sample_dir) / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    delim = "=" * 20
    (out_dir / f"step-{step:06d}.txt").write_text(f"\n{delim}\n".join(texts) + "\n", encoding="utf-8")
    for t in texts:
        log.info("======== SAMPLE at step %d ========\n%s", step, t)
    return texts
