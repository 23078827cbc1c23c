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
from ..tokenizer import Tokenizer, tokenizer_for_folder
from .gguf import gguf_in_folder, is_gguf_file, load_gguf
from .huggingface import is_hf_folder, load_hf, save_hf
from .mapped import release
from .openai_tf import is_tf_folder, load_tf

FORMATS_HELP = (
    "gpt2kit reads: an OpenAI model folder (hparams.json, model.ckpt.index, model.ckpt.data-*, checkpoint), "
    "a gpt-2-simple/nshepperd run (checkpoint, model-N.index, model-N.data-*), "
    "a Hugging Face / gpt2kit folder (config.json with model.safetensors or pytorch_model.bin), "
    "or a llama.cpp GGUF file of the gpt2 architecture (f32, f16, q8_0). "
    "Get the official models with `gpt2kit download 124M`"
)
RUN_POINTER = "latest"  # a gpt2kit training run names its newest checkpoint folder in this file


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


def newest_step(run_dir: Path) -> Path | None:
    """The newest step folder of a gpt2kit run folder, or None: the one rule, for loading and resuming alike.

    The folder `latest` names wins; without it (or if it is gone), the highest-numbered `step-N`.
    Either counts only when it holds config.json. training/checkpoint.py writes a step folder under a
    temporary name (`.tmp-step-N-PID`, which never matches) and renames it when complete, so a kill
    mid-save cannot make a torn folder the newest; the config.json check guards against folders
    emptied or copied by hand. Resuming then needs that folder's training state too, and says so
    when it is missing rather than falling back to an older step.
    """
    def complete(folder: Path) -> bool:
        return re.fullmatch(r"step-\d+", folder.name) is not None and (folder / "config.json").is_file()

    pointer = run_dir / RUN_POINTER
    if pointer.is_file():
        named = run_dir / pointer.read_text().strip()
        if complete(named):
            return named
    steps = [p for p in run_dir.glob("step-*") if complete(p)]
    return max(steps, key=lambda p: int(p.name[5:]), default=None)


def resolve_run_folder(folder: Path, checkpoint: str | None = None) -> Path:
    """A gpt2kit run folder (checkpoint/run1) -> the step folder to load (the newest by default)."""
    if checkpoint and (folder / checkpoint).is_dir():
        return folder / checkpoint
    return newest_step(folder) or folder


def detect_format(folder: Path) -> str:
    if is_hf_folder(folder):
        return "huggingface"
    if is_tf_folder(folder):
        return "openai-tf" if (folder / "model.ckpt.index").is_file() else "tf-run"
    if gguf_in_folder(folder):
        return "gguf"
    return "unknown"


def read_checkpoint(path: str | Path, checkpoint: str | None = None) -> Checkpoint:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"model folder {folder} does not exist. {FORMATS_HELP}")
    if folder.is_file() and (is_gguf_file(folder) or folder.suffix.lower() == ".gguf"):
        return _read_gguf(folder)
    if folder.is_file():
        folder = folder.parent  # people pass model.safetensors or model.ckpt.index itself
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
        raise UserError(f"{folder} holds no GPT-2 checkpoint gpt2kit recognises. {FORMATS_HELP}")
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
           "FORMATS_HELP"]
