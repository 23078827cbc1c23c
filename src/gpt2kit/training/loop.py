"""`finetune`: the training loop, resumable to the exact weights, on one process or many (torchrun).

run.py sets a run up and holds its state; this file steps it, reports, and saves at the intervals
asked for, on Ctrl-C (SIGINT) and SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import signal
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import durable
from ..devices import resolve_device
from ..errors import UserError
from ..formats import newest_step
from ..generation import Sample, iter_samples
from ..model import GPT
from .distributed import all_reduce_mean, init_distributed
from .loss import head_cross_entropy
from .metrics import append_metrics, plot_losses
from .optimizer import lr_at
from .options import TrainOptions
from .precision import AUTOCAST
from .run import Run, start_run
from .sampler import eval_windows
from .sharding import gradients_unsynced

log = logging.getLogger("gpt2kit")


def finetune(*, dataset: str | Path | Sequence[str | Path], model: str | Path | None = None, **options) -> Path:
    """Fine-tune `model` (default: the bundled model) on `dataset`; returns the final checkpoint folder.

    The caller's global RNG comes back as it was: training seeds it (dropout draws from it, and
    F.dropout takes no generator) but only inside this call.
    """
    opts = TrainOptions.from_kwargs(**options)
    device = resolve_device(opts.device)
    rank, local_rank, world = init_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    with _global_rng_kept(device):
        run = start_run(
            dataset=dataset, model_name=model, run_name=opts.run_name, opts=opts, device=device, rank=rank, world=world
        )
        if run.step >= run.steps:
            if newest_step(run.run_dir) is None:  # a new run restored from a checkpoint already past --steps
                raise UserError(
                    f"the checkpoint it starts from is at step {run.step}, and --steps is {run.steps}: "
                    f"nothing to train; give --steps above {run.step} (steps count on from the checkpoint's)"
                )
            if run.is_main:
                log.info("the run is already at step %d of %d; raise --steps to train further", run.step, run.steps)
            return newest_step(run.run_dir)
        return _train(run)


def _signature_with_options() -> inspect.Signature:
    """finetune's own parameters, then every TrainOptions field as a keyword with its default and type,
    so help() and editors show them while TrainOptions stays their one home."""
    own = list(inspect.signature(finetune).parameters.values())[:-1]  # without **options
    fields = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in dataclasses.fields(TrainOptions)
    ]
    return inspect.Signature(own + fields, return_annotation=inspect.signature(finetune).return_annotation)


finetune.__signature__ = _signature_with_options()


def _train(run: Run) -> Path:
    """Step `run` to its last step, saving every --save-every steps, at the end, and when asked to stop."""
    opts = run.opts
    if run.is_main and not run.resumed:
        run.run_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if run.is_main and opts.progress:
        bar = tqdm(total=run.steps, initial=run.step, unit="step", dynamic_ncols=True, desc=run.name)
    last_saved = run.step if run.resumed else -1
    run.interval_start, run.interval_tokens = time.time(), 0
    with _StopFlag() as stop:
        while run.step < run.steps:
            lr = lr_at(run.step, run.steps, opts)
            loss = _step(run, lr)
            _report(run, loss, lr, bar)
            stopping = all_reduce_mean(float(stop.raised), run.device) > 0
            if run.step % opts.save_every == 0 or run.step == run.steps or stopping:
                folder = run.save()
                last_saved = run.step
                if stopping:
                    if run.is_main:
                        log.warning("interrupted: saved %s; run the same command again to resume", folder)
                    break
    if bar:
        bar.close()
    if last_saved != run.step:
        run.save()
    final = run.run_dir / f"step-{run.step:06d}"
    if run.is_main and not stop.raised:
        log.info("done: %d steps in %.0f s; final checkpoint %s", run.step, run.elapsed, final)
    return final


def _step(run: Run, lr: float) -> float:
    """One optimizer step over --accumulate-gradients micro-batches; -> the loss, averaged over processes."""
    t0 = time.time()
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.net.train()
    micro_batches = run.opts.accumulate_gradients
    loss_sum = 0.0
    for micro in range(micro_batches):
        x, y = run.sampler.next()
        x, y = x.to(run.device), y.to(run.device)
        sync = contextlib.nullcontext()
        if run.world > 1 and micro < micro_batches - 1:
            sync = gradients_unsynced(run.net)  # reduce gradients once per step, not per micro-batch
        with sync:
            with run.precision.autocast():
                loss = _loss(run, x, y)
            run.precision.backward(loss / micro_batches)
        loss_sum += loss.item()
    run.precision.step(run.optimizer, run.opts.grad_clip)
    run.step += 1
    run.elapsed += time.time() - t0
    loss_value = all_reduce_mean(loss_sum / micro_batches, run.device)
    # nshepperd's running average: a decayed sum over a decayed count.
    run.avg = [run.avg[0] * 0.99 + loss_value, run.avg[1] * 0.99 + 1.0]
    run.interval_tokens += run.tokens_per_step
    return loss_value


def _loss(run: Run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of the batch x (B, T) -> targets y (B, T)."""
    # The fused head (loss.py) reads wte outside the model's forward: not where --fsdp shards it, nor under
    # autocast (GPUs), nor for LoRA, whose frozen base may be stored in another dtype than it computes in.
    if run.opts.fsdp or run.opts.lora_rank is not None or run.precision.plan.mode == AUTOCAST:
        logits = run.net(x)  # (B, T, n_vocab)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    return head_cross_entropy(run.net(x, hidden_only=True), run.model.wte.weight, y)


def _report(run: Run, loss: float, lr: float, bar) -> None:
    """The progress bar, the log line and metrics.csv, validation and samples, each at its interval."""
    opts, step, avg = run.opts, run.step, run.avg[0] / run.avg[1]
    tokens_per_s = run.interval_tokens / max(time.time() - run.interval_start, 1e-9)
    if bar:
        bar.set_postfix(loss=f"{loss:.3f}", avg=f"{avg:.3f}", tok_s=f"{tokens_per_s:.0f}")
        bar.update(1)
    if run.is_main and (step % opts.print_every == 0 or step == run.steps):
        log.info("[%d | %.2f] loss=%.2f avg=%.2f tok/s=%.0f", step, run.elapsed, loss, avg, tokens_per_s)
        append_metrics(
            run.run_dir,
            {
                "step": step,
                "elapsed_s": f"{run.elapsed:.2f}",
                "loss": f"{loss:.4f}",
                "avg_loss": f"{avg:.4f}",
                "lr": f"{lr:.3g}",
                "tokens_per_s": f"{tokens_per_s:.0f}",
            },
        )
        run.interval_start, run.interval_tokens = time.time(), 0
    # A sharded model's forward is collective: under --fsdp every process evaluates and samples, rank 0 reports.
    takes_part = run.is_main or opts.fsdp
    val = run.val_tokens
    if takes_part and val is not None and val.size > 1 and (step % opts.val_every == 0 or step == run.steps):
        val_loss = evaluate(
            run.model, val, run.window, opts.batch_size, opts.val_batch_count, run.device, run.precision.autocast()
        )
        if run.is_main:
            log.info("[%d | %.2f] val_loss=%.2f ppl=%.1f", step, run.elapsed, val_loss, math.exp(min(val_loss, 50)))
            append_metrics(
                run.run_dir,
                {
                    "step": step,
                    "elapsed_s": f"{run.elapsed:.2f}",
                    "val_loss": f"{val_loss:.4f}",
                    "val_ppl": f"{math.exp(min(val_loss, 50)):.2f}",
                },
            )
            plot_losses(run.run_dir, title=run.name)
    if takes_part and opts.sample_every and step % opts.sample_every == 0:
        write_samples(run.model, run.tokenizer, opts, run.name, step, report=run.is_main)


@contextlib.contextmanager
def _global_rng_kept(device: torch.device):
    """Restore the caller's global RNG streams (CPU, and the GPU's) however the block ends."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


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
        log.warning(
            "%s received: saving a checkpoint after this step (Ctrl-C again to abort without saving)",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@torch.no_grad()
def evaluate(model: GPT, tokens, window: int, batch_size: int, batches: int, device, autocast=None) -> float:
    """Mean next-token loss over fixed windows of `tokens` (nats/token). Touches no training RNG."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in eval_windows(tokens, window, batch_size, batches):
        with autocast or contextlib.nullcontext():
            logits = model(x.to(device))
        total += F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), y.to(device).reshape(-1), reduction="sum"
        ).item()
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


def write_samples(
    model: GPT, tokenizer, opts: TrainOptions, run_name: str, step: int, *, report: bool = True
) -> list[str]:
    """Training-time samples through the one generation path, with their own seeds (never the training RNG).

    report=False draws them without writing or logging (the other processes of a sharded model)."""
    was_training = model.training
    model.eval()
    texts = [
        ev.text
        for ev in iter_samples(
            model,
            tokenizer,
            [opts.sample_prefix],
            length=opts.sample_length,
            settings=opts.sampling(),
            stop=[],
            seed=opts.seed + step,
            nsamples=opts.sample_num,
            batch_size=opts.sample_num,
            truncate=None,
            include_prefix=True,
            stop_at_eot=True,
            logprobs=0,
        )
        if isinstance(ev, Sample)
    ]
    model.train(was_training)
    if not report:
        return texts
    out_dir = Path(opts.sample_dir) / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    delim = "=" * 20
    durable.write_text(out_dir / f"step-{step:06d}.txt", f"\n{delim}\n".join(texts) + "\n")  # whole or not at all
    for t in texts:
        log.info("======== SAMPLE at step %d ========\n%s", step, t)
    return texts
