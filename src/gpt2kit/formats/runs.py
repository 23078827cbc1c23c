"""gpt2kit's run folders: a training run holds step-N folders, and `latest` names the newest.

One rule picks the step to load or resume from (`newest_step`); a step that was asked for by name is that
step or an error listing the run's steps, never another one.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError
from .openai_tf import is_tf_folder, no_such_checkpoint

RUN_POINTER = "latest"  # a gpt2kit training run names its newest checkpoint folder in this file


def _complete_step(folder: Path) -> bool:
    return re.fullmatch(r"step-\d+", folder.name) is not None and (folder / "config.json").is_file()


def newest_step(run_dir: Path) -> Path | None:
    """The newest step folder of a gpt2kit run folder, or None: the one rule, for loading and resuming alike.

    The folder `latest` names wins; without it (or if it is gone), the highest-numbered `step-N`.
    Either counts only when it holds config.json. training/checkpoint.py writes a step folder under a
    temporary name (`.tmp-step-N-PID`, which never matches) and renames it when complete, so a kill
    mid-save cannot make a torn folder the newest; the config.json check guards against folders
    emptied or copied by hand. Resuming then needs that folder's training state too, and says so
    when it is missing rather than falling back to an older step.
    """
    pointer = run_dir / RUN_POINTER
    if pointer.is_file():
        named = run_dir / pointer.read_text().strip()
        if _complete_step(named):
            return named
    return max(run_steps(run_dir), key=lambda p: int(p.name[5:]), default=None)


def run_steps(run_dir: Path) -> list[Path]:
    """The complete step folders of a gpt2kit run folder (none for anything else)."""
    return [p for p in run_dir.glob("step-*") if _complete_step(p)] if run_dir.is_dir() else []


def resolve_run_folder(folder: Path, checkpoint: str | None = None) -> Path:
    """A gpt2kit run folder (checkpoint/run1) -> the step folder to load (the newest by default).

    `checkpoint` names a step (step-000500; step-500 is the same step). A name the run does not hold is
    an error listing those it does, never the newest instead: a user who asked for one step and got another
    would not know. A TF folder is returned as it is (openai_tf picks its model-N, with the same wording);
    anything else holds one model, so a `checkpoint` there is a mistake too, and says so.
    """
    if not checkpoint or checkpoint == RUN_POINTER:  # `latest`: the run's own pointer, gpt-2-simple's default name
        return newest_step(folder) or folder
    steps = run_steps(folder)
    if steps:
        name = Path(checkpoint).name
        number = re.fullmatch(r"step-(\d+)", name)
        for step in steps:
            if step.name == name or (number and int(number.group(1)) == int(step.name[5:])):
                return step
        raise no_such_checkpoint(checkpoint, folder, [p.name for p in steps])
    if folder.is_dir() and is_tf_folder(folder):
        return folder
    if (
        folder.is_dir() and (folder / checkpoint).is_dir()
    ):  # a subfolder by name, as before run folders had steps to list
        return folder / checkpoint
    raise single_model_error(folder, checkpoint)


def single_model_error(path: Path, checkpoint: str) -> UserError:
    """--checkpoint given for a path that holds one model, not a run of several."""
    return UserError(
        f"--checkpoint {checkpoint} picks one checkpoint of a run folder (step-N, model-N), but {path} "
        f"holds a single model with none to choose from; leave --checkpoint out"
    )
