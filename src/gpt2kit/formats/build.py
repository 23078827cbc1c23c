"""A model from a checkpoint's tensors, and a checkpoint rewritten as a Hugging Face / gpt2kit folder.

`build_model` is the load boundary's last check: every tensor's name and shape is compared with the model's
before a single weight is copied, so a mismatched checkpoint is one line naming the tensor, not a traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..config import GPTConfig
from ..errors import UserError
from ..model import GPT
from ..options import ConvertOptions
from ..tokenizer import Tokenizer
from .huggingface import save_hf
from .mapped import release
from .read import read_checkpoint


def build_model(
    config: GPTConfig, state_dict: dict[str, torch.Tensor], source: Path | str, *, share: bool = False
) -> GPT:
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
        raise UserError(
            f"{source} lacks {len(missing)} tensor(s) of a GPT-2 of this size, e.g. {missing[0]}: incomplete checkpoint"
        )
    for k, shape in expected.items():
        if tuple(state_dict[k].shape) != shape:
            raise UserError(
                f"{source}: {k} has shape {tuple(state_dict[k].shape)}, expected {shape}; the config does not match the weights"
            )
    if share:
        model.load_state_dict({k: state_dict[k] for k in expected}, strict=True, assign=True)
        return model
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for k, t in model.state_dict(keep_vars=True).items():
            t.copy_(state_dict[k])
            release(state_dict[k])
    return model


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    checkpoint: str | None = ConvertOptions.checkpoint,
    dtype: str = ConvertOptions.dtype,
) -> Path:
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
    src = Path(tokenizer.source)
    for enc, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if (src / enc).is_file():
            for a, b in (("encoder.json", enc), ("vocab.bpe", merges), ("vocab.json", enc), ("merges.txt", merges)):
                shutil.copyfile(src / b, folder / a)
            return
