"""What a path holds and reading it: the one place a model name or path becomes a Checkpoint.

Every format's loader returns a GPTConfig and a state dict in gpt2kit's own names, so nothing past
`read_checkpoint` knows which format was read. A path that holds no model is an error that says what
is there instead (a file, a broken link, a folder of models) and what to pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import GPTConfig
from ..errors import UserError
from ..paths import BUNDLED_DIR
from ..tokenizer import Tokenizer, tokenizer_for_folder
from .gguf import gguf_in_folder, is_gguf_file, load_gguf
from .huggingface import is_hf_folder, load_hf
from .openai_tf import is_tf_folder, load_tf
from .runs import RUN_POINTER, resolve_run_folder, run_steps, single_model_error

FORMATS_HELP = (
    "gpt2kit reads: an OpenAI model folder (hparams.json, model.ckpt.index, model.ckpt.data-*, checkpoint), "
    "a gpt-2-simple/nshepperd run (checkpoint, model-N.index, model-N.data-*), "
    "a Hugging Face / gpt2kit folder (config.json with model.safetensors or pytorch_model.bin), "
    "or a llama.cpp GGUF file of the gpt2 architecture (f32, f16, q8_0). "
    "Get the official models with `gpt2kit download 124M`"
)
BUNDLED_NAME = "bundled"  # the word that names the small model shipped in the package, wherever a model is named
# Files of a model folder that people pass instead of the folder (model.ckpt.data-* and shards match by pattern)
MODEL_FILES = {
    "config.json",
    "hparams.json",
    "checkpoint",
    "encoder.json",
    "vocab.bpe",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "counter",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index", ".meta", ".ckpt")


@dataclass
class Checkpoint:
    """What `read_checkpoint` found: the shape, the weights, the vocabulary, and where from."""

    config: GPTConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    format: str
    path: Path
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)


def detect_format(folder: Path) -> str:
    """Which format `folder` holds: huggingface, openai-tf, tf-run (a gpt-2-simple run), gguf, or unknown."""
    if is_hf_folder(folder):
        return "huggingface"
    if is_tf_folder(folder):
        return "openai-tf" if (folder / "model.ckpt.index").is_file() else "tf-run"
    if gguf_in_folder(folder):
        return "gguf"
    return "unknown"


def bundled_model() -> Path:
    """The folder of the small model shipped in the package."""
    if not (BUNDLED_DIR / "config.json").is_file():
        raise UserError("this installation has no bundled model; pass --model PATH or a published name like 124M")
    return BUNDLED_DIR


def local_model(name: str | Path) -> Path | None:
    """What `name` means on this machine without the hub: the path, when something is there; the bundled
    model for the word `bundled`; else None (a published name or hub repository, which hub resolves).

    A path that exists wins over the word, as a folder named 124M wins over the published 124M: what sits
    where the user points is what they mean, and the bundled model stays reachable by naming no model (or
    its path, `gpt2kit models` shows it). hub.resolve_model_path and read_checkpoint both start here, so
    `bundled` means the same in every command.
    """
    path = Path(name).expanduser()
    if _exists(path):
        return path
    if str(name) == BUNDLED_NAME:
        return bundled_model()
    return None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except PermissionError:
        raise UserError(
            f"cannot look at {path}: permission denied on a folder on its way; "
            f"check the folders' permissions or copy the model somewhere readable"
        ) from None


def what_is_there(path: Path) -> str | None:
    """Why `path`, which does not exist, cannot: a broken link, or a file where a folder of it should be
    (people pass model.safetensors/ or a file's path plus a name); None when it is plainly absent."""
    if path.is_symlink():
        return f"{path} is a broken symbolic link (to {path.readlink()})"
    for parent in path.parents:
        if _exists(parent):
            if parent.is_dir():
                return None
            hint = (
                f"pass {parent} itself"
                if _is_model_file(parent)
                else "check the path (a model is a folder or a .gguf file)"
            )
            return f"{parent} is a file, not a folder, so {path} cannot be in it; {hint}"
    return None


def _is_model_file(file: Path) -> bool:
    return (
        file.name in MODEL_FILES
        or file.suffix in WEIGHT_SUFFIXES
        or ".data-" in file.name
        or file.suffix.lower() == ".gguf"
        or is_gguf_file(file)
    )


def _folder_of_file(file: Path) -> Path:
    """A file people passed for its model folder (model.safetensors, model.ckpt.index): the folder."""
    # any file of a model folder or run (model.safetensors, its index, special_tokens_map.json, `latest`)
    if detect_format(file.parent) != "unknown" or run_steps(file.parent):
        return file.parent
    raise UserError(
        f"{file} is a file, not a model: not a GGUF (it does not start with GGUF's magic) nor a file "
        f"of a model folder. Pass the model's folder (config.json + model.safetensors, or hparams.json "
        f"+ model.ckpt.*), a .gguf file, or a published name like 124M"
    )


def _no_model_in(folder: Path) -> UserError:
    """The folder holds nothing gpt2kit reads: say which of its subfolders do, when people passed the parent."""
    try:
        models = [p for p in sorted(folder.iterdir()) if p.is_dir() and (detect_format(p) != "unknown" or run_steps(p))]
    except OSError:
        models = []
    hint = f" Its subfolder(s) {', '.join(p.name for p in models[:3])} hold one: pass {models[0]}." if models else ""
    if str(folder) == BUNDLED_NAME:  # ./bundled exists, so it won over the word (local_model says why)
        hint += " To mean gpt2kit's bundled model, leave --model out or run from another folder."
    return UserError(f"{folder} holds no GPT-2 checkpoint gpt2kit recognises.{hint} {FORMATS_HELP}")


def read_checkpoint(path: str | Path, checkpoint: str | None = None) -> Checkpoint:
    checkpoint = None if checkpoint == RUN_POINTER else checkpoint  # `latest` is the newest, in every format
    folder = local_model(path)
    if folder is None:
        there = what_is_there(Path(path).expanduser())
        raise UserError(there if there else f"model folder {Path(path).expanduser()} does not exist. {FORMATS_HELP}")
    if folder.is_file() and (is_gguf_file(folder) or folder.suffix.lower() == ".gguf"):
        if checkpoint:
            raise single_model_error(folder, checkpoint)
        return _read_gguf(folder)
    if folder.is_file():
        folder = _folder_of_file(folder)  # people pass model.safetensors or model.ckpt.index itself
    folder = resolve_run_folder(folder, checkpoint)
    fmt = detect_format(folder)
    notes: list[str] = []
    if fmt == "huggingface":
        config, sd = load_hf(folder)
        name = folder.name
    elif fmt == "gguf":
        return _read_gguf(gguf_in_folder(folder))
    elif fmt in ("openai-tf", "tf-run"):
        config, sd, name = load_tf(folder, checkpoint, notes)
    else:
        raise _no_model_in(folder)
    tokenizer = tokenizer_for_folder(folder)
    if tokenizer.n_vocab > config.n_vocab:
        raise UserError(f"{folder}: its vocabulary has {tokenizer.n_vocab} tokens but the model only {config.n_vocab}")
    return Checkpoint(config, sd, tokenizer, fmt, folder, name, notes)


def _read_gguf(path: Path) -> Checkpoint:
    config, sd, tokenizer, notes = load_gguf(path)
    return Checkpoint(config, sd, tokenizer, "gguf", path, path.stem, notes)
