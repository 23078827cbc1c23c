"""Run folders: every checkpoint a complete model folder plus the whole training state.

    checkpoint/run1/
      latest                  the name of the newest step folder (replaced atomically)
      step-000500/            config.json, model.safetensors, vocabulary: opens in gpt2kit and transformers
                              (a LoRA run: config.json, adapter_config.json, adapter_model.safetensors: PEFT's format)
        training_state.pt     optimizer moments, schedule position, step, every RNG, sampler position
      metrics.csv, loss.png

A step folder is written under a temporary name, fsynced, and renamed when complete, and `latest`
moves only after that (durable.py), so neither a kill -9 mid-save nor a power cut after it leaves a
broken newest checkpoint. Which step folder
is the newest has one rule, `formats.newest_step`, shared by loading and resuming.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import torch

from .. import durable
from ..config import GPTConfig
from ..errors import UserError
from ..formats import RUN_POINTER, newest_step, save_hf, write_vocab
from ..tokenizer import Tokenizer

STATE_FILE = "training_state.pt"
STATE_VERSION = 1


def step_folders(run_dir: Path) -> list[Path]:
    """Every `step-N` folder, oldest first (pruning keeps the last `max_checkpoints`)."""
    return sorted(
        (p for p in run_dir.glob("step-*") if p.is_dir() and re.fullmatch(r"step-\d+", p.name)),
        key=lambda p: int(p.name[5:]),
    )


# "The newest step" has one rule, formats.newest_step; this name stays for the scripts that import it.
latest_checkpoint = newest_step


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    config: GPTConfig,
    tokenizer: Tokenizer,
    training_state: dict,
    max_checkpoints: int,
    model_state: dict | None = None,
    write_weights: Callable[[Path], None] | None = None,
) -> Path:
    """Write step-N durably (every file and the folder fsynced before the rename), then point `latest` at it.
    The weights are `model_state` as model.safetensors, or whatever `write_weights(folder)` writes there
    instead (a LoRA run's adapter: training/lora.py).

    A full or read-only disk is a UserError that leaves every earlier step folder as it was."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:06d}"
    tmp = run_dir / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    durable.require_space(run_dir, _bytes_in(model_state) + _bytes_in(training_state))
    try:
        tmp.mkdir()
        if write_weights is not None:
            write_weights(tmp)
        else:
            save_hf(tmp, config, model_state)
        write_vocab(tmp, tokenizer)
        with open(tmp / STATE_FILE, "wb") as f:  # a Python file: its OSError (ENOSPC) is chained to torch's
            torch.save({"version": STATE_VERSION, **training_state}, f)  # RuntimeError; by path there is none
        if final.exists():  # moved aside (a name the stale-folder sweep removes), never deleted in place
            aside = run_dir / f".tmp-step-{step:06d}-old-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        durable.replace(tmp, final)
        durable.write_text(run_dir / RUN_POINTER, final.name + "\n")
    except Exception as e:
        error = durable.user_error_for(e, tmp)
        if error is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the earlier steps are untouched
        raise error from None
    for old in step_folders(run_dir)[:-max_checkpoints]:
        if old != final:  # never the step just written, whatever other step folders the run holds
            shutil.rmtree(old, ignore_errors=True)
    for stale in [*run_dir.glob(".tmp-step-*"), *run_dir.glob(f".{RUN_POINTER}.*.tmp")]:  # left by killed saves
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return final


def _bytes_in(obj) -> int:
    """Bytes of every tensor in a nested dict/list: what a save of it writes, give or take the headers."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_bytes_in(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_bytes_in(v) for v in obj)
    return 0


# torch.load on a damaged file: a truncated zip (RuntimeError), random bytes (UnpicklingError), an empty
# file (EOFError), zero-filled pages as a crash can leave them (KeyError: the zip's records are missing)
TORN = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def load_training_state(folder: Path) -> dict | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except TORN as e:  # what torch.load raises on truncated, zero-filled or foreign bytes (anything else is a bug)
        raise UserError(
            f"{path} is corrupted ({type(e).__name__}); restore from an older step folder with --restore-from"
        ) from None
    if not isinstance(state, dict):
        raise UserError(
            f"{path} is not a gpt2kit training state; restore from an older step folder with --restore-from"
        )
    if state.get("version") != STATE_VERSION:
        raise UserError(f"{path} has training-state version {state.get('version')}; this gpt2kit reads {STATE_VERSION}")
    return state
