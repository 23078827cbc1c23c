"""One boundary for every on-disk format: detect what a folder holds and load it.

Nothing downstream knows which format was read: every loader returns a GPTConfig and a state
dict in gpt2kit's own names, checked here against the model's shapes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import GPTConfig
from ..errors import UserError
from ..model import GPT
from ..options import ConvertOptions
from ..paths import BUNDLED_DIR
from ..tokenizer import Tokenizer, tokenizer_for_folder
from .gguf import gguf_in_folder, is_gguf_file, load_gguf
from .huggingface import is_hf_folder, load_hf, read_hf_config, save_hf
from .mapped import release
from .openai_tf import is_tf_folder, load_tf, no_such_checkpoint, read_hparams

FORMATS_HELP = (
    "gpt2kit reads: an OpenAI model folder (hparams.json, model.ckpt.index, model.ckpt.data-*, checkpoint), "
    "a gpt-2-simple/nshepperd run (checkpoint, model-N.index, model-N.data-*), "
    "a Hugging Face / gpt2kit folder (config.json with model.safetensors or pytorch_model.bin), "
    "or a llama.cpp GGUF file of the gpt2 architecture (f32, f16, q8_0). "
    "Get the official models with `gpt2kit download 124M`"
)
RUN_POINTER = "latest"  # a gpt2kit training run names its newest checkpoint folder in this file
BUNDLED_NAME = "bundled"  # the word that names the small model shipped in the package, wherever a model is named
# Files of a model folder that people pass instead of the folder (model.ckpt.data-* and shards match by pattern)
MODEL_FILES = {"config.json", "hparams.json", "checkpoint", "encoder.json", "vocab.bpe", "vocab.json", "merges.txt",
               "generation_config.json", "tokenizer.json", "tokenizer_config.json", "counter"}
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
    if folder.is_dir() and (folder / checkpoint).is_dir():  # a subfolder by name, as before run folders had steps to list
        return folder / checkpoint
    raise _single_model(folder, checkpoint)


def _single_model(path: Path, checkpoint: str) -> UserError:
    return UserError(f"--checkpoint {checkpoint} picks one checkpoint of a run folder (step-N, model-N), but {path} "
                     f"holds a single model with none to choose from; leave --checkpoint out")


def detect_format(folder: Path) -> str:
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
        raise UserError(f"cannot look at {path}: permission denied on a folder on its way; "
                        f"check the folders' permissions or copy the model somewhere readable") from None


def what_is_there(path: Path) -> str | None:
    """Why `path`, which does not exist, cannot: a broken link, or a file where a folder of it should be
    (people pass model.safetensors/ or a file's path plus a name); None when it is plainly absent."""
    if path.is_symlink():
        return f"{path} is a broken symbolic link (to {path.readlink()})"
    for parent in path.parents:
        if _exists(parent):
            if parent.is_dir():
                return None
            hint = f"pass {parent} itself" if _is_model_file(parent) else "check the path (a model is a folder or a .gguf file)"
            return f"{parent} is a file, not a folder, so {path} cannot be in it; {hint}"
    return None


def _is_model_file(file: Path) -> bool:
    return file.name in MODEL_FILES or file.suffix in WEIGHT_SUFFIXES or ".data-" in file.name or \
        file.suffix.lower() == ".gguf" or is_gguf_file(file)


def _folder_of_file(file: Path) -> Path:
    """A file people passed for its model folder (model.safetensors, model.ckpt.index): the folder."""
    # any file of a model folder or run (model.safetensors, its index, special_tokens_map.json, `latest`)
    if detect_format(file.parent) != "unknown" or run_steps(file.parent):
        return file.parent
    raise UserError(f"{file} is a file, not a model: not a GGUF (it does not start with GGUF's magic) nor a file "
                    f"of a model folder. Pass the model's folder (config.json + model.safetensors, or hparams.json "
                    f"+ model.ckpt.*), a .gguf file, or a published name like 124M")


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
        raise UserError(there if there else
                        f"model folder {Path(path).expanduser()} does not exist. {FORMATS_HELP}")
    if folder.is_file() and (is_gguf_file(folder) or folder.suffix.lower() == ".gguf"):
        if checkpoint:
            raise _single_model(folder, checkpoint)
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


def build_model(config: GPTConfig, state_dict: dict[str, torch.Tensor], source: Path | str, *,
                share: bool = False) -> GPT:
    """A GPT with `state_dict` loaded, every tensor's name and shape checked first.

    share=True makes the model's parameters the state_dict's own tensors instead of copies (views of the
    mapped file, the Conv1D weights transposed views), so loading holds the weights once, not twice; the
    caller must not use `state_dict` afterwards. share=False copies tensor by tensor and releases each
    mapped source after its copy, so the copy does not hold the file's pages as well.
    """
    with torch.device("meta"):
        model = GPT(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise UserError(f"{source} lacks {len(missing)} tensor(s) of a GPT-2 of this size, e.g. {missing[0]}: incomplete checkpoint")
    for k, shape in expected.items():
        if tuple(state_dict[k].shape) != shape:
            raise UserError(f"{source}: {k} has shape {tuple(state_dict[k].shape)}, expected {shape}; the config does not match the weights")
    if share:
        model.load_state_dict({k: state_dict[k] for k in expected}, strict=True, assign=True)
        return model
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for k, t in model.state_dict(keep_vars=True).items():
            t.copy_(state_dict[k])
            release(state_dict[k])
    return model


def convert(src: str | Path, dst: str | Path, *, checkpoint: str | None = ConvertOptions.checkpoint, dtype: str = ConvertOptions.dtype) -> Path:
    """Write any readable checkpoint as a Hugging Face / gpt2kit folder (config.json + model.safetensors + vocabulary)."""
    ck = read_checkpoint(src, checkpoint)
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise UserError(f"{dst} exists and is not empty; choose a new folder")
    model = build_model(ck.config, ck.state_dict, ck.path)
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    save_hf(dst, ck.config, model.state_dict(), torch_dtype)
    write_vocab(dst, ck.tokenizer)
    return dst


def write_vocab(folder: Path, tokenizer: Tokenizer) -> None:
    """Copy the vocabulary in both spellings: encoder.json/vocab.bpe (OpenAI) and vocab.json/merges.txt (HF)."""
    import shutil
    src = Path(tokenizer.source)
    for enc, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if (src / enc).is_file():
            for a, b in (("encoder.json", enc), ("vocab.bpe", merges), ("vocab.json", enc), ("merges.txt", merges)):
                shutil.copyfile(src / b, folder / a)
            return


__all__ = ["Checkpoint", "read_checkpoint", "build_model", "convert", "newest_step", "release", "save_hf", "write_vocab",
           "FORMATS_HELP", "BUNDLED_NAME", "bundled_model", "local_model", "what_is_there", "read_hf_config",
           "read_hparams", "resolve_run_folder", "run_steps"]
