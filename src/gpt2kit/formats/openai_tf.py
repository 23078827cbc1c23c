"""OpenAI's TensorFlow model folders, and gpt-2-simple / nshepperd fine-tuning runs.

OpenAI (download_model.py): checkpoint, hparams.json, encoder.json, vocab.bpe, model.ckpt.{index,data,meta}.
gpt-2-simple: checkpoint/run1 with `checkpoint`, model-N.{index,data,meta}, `counter`, and copies of
hparams.json, encoder.json, vocab.bpe. nshepperd's train.py writes the same without hparams.json
(and with Adam slot variables, which are skipped here).

Tensors are read one by one as views of the mapped data file (fp32 checkpoints copy nothing); they
become their final dtype when the model is prepared, which releases each source as it goes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..config import GPTConfig, MalformedConfig
from ..errors import UserError
from .huggingface import config_from_json
from .tf_checkpoint import TFCheckpoint

# Conv1D weights are stored (1, in, out) by OpenAI's model.py; ours are nn.Linear (out, in).
_LINEAR = ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")


def is_tf_folder(folder: Path) -> bool:
    return (folder / "checkpoint").is_file() or any(folder.glob("*.index"))


def _natural(name: str) -> list:
    """Sort key that puts model-500 before model-1000."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def no_such_checkpoint(checkpoint: str, folder: Path, have: list[str]) -> UserError:
    """The one wording for a --checkpoint a run folder does not hold, TF runs (model-N) and gpt2kit runs (step-N) alike."""
    return UserError(
        f"no checkpoint {checkpoint!r} in {folder}; it has: {', '.join(sorted(have, key=_natural)) or 'none'} "
        f"(pass one of those, or leave --checkpoint out for the newest)"
    )


def checkpoint_prefix(folder: Path, checkpoint: str | None) -> Path:
    """Which checkpoint in the folder: `checkpoint` (e.g. 'model-500'), else the newest named by the `checkpoint` file."""
    if checkpoint:
        prefix = folder / Path(checkpoint).name.removesuffix(".index")
        if not Path(str(prefix) + ".index").is_file():
            raise no_such_checkpoint(
                checkpoint, folder, [p.name.removesuffix(".index") for p in folder.glob("*.index")]
            )
        return prefix
    state = folder / "checkpoint"
    if state.is_file():
        m = re.search(r'^model_checkpoint_path:\s*"(.*)"', state.read_text(errors="replace"), re.M)
        if m:
            # Paths may be absolute from the machine that trained; the files sit beside `checkpoint`.
            prefix = folder / Path(m.group(1)).name
            if Path(str(prefix) + ".index").is_file():
                return prefix
    indexes = sorted(folder.glob("*.index"), key=lambda p: _natural(p.name))
    if not indexes:
        raise UserError(f"{folder} has a `checkpoint` file but no .index/.data files beside it; copy the whole folder")
    return Path(str(indexes[-1]).removesuffix(".index"))


def read_hparams(path: Path) -> GPTConfig:
    """OpenAI's hparams.json -> GPTConfig, or one line that names the file, what is wrong and what to do."""
    return config_from_json(path, GPTConfig.from_hparams, restore_unsupported=True)


def _infer_config(ckpt: TFCheckpoint, folder: Path, notes: list[str]) -> GPTConfig:
    shapes = {k: e.shape for k, e in ckpt.entries.items()}
    if "model/wte" not in shapes or "model/wpe" not in shapes:
        raise UserError(f"{ckpt.prefix}.index has no model/wte or model/wpe: it is not a GPT-2 checkpoint")
    if len(shapes["model/wte"]) != 2 or len(shapes["model/wpe"]) != 2:
        raise UserError(
            f"{ckpt.prefix}.index gives model/wte the shape {shapes['model/wte']} and model/wpe "
            f"{shapes['model/wpe']}, not 2-D: the checkpoint is corrupted"
        )
    n_vocab, n_embd = shapes["model/wte"]
    n_ctx = shapes["model/wpe"][0]
    n_layer = len({int(m.group(1)) for k in shapes if (m := re.match(r"model/h(\d+)/", k))})
    hparams_path = folder / "hparams.json"
    if hparams_path.is_file():
        config = read_hparams(hparams_path)
        found = dict(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer)
        wrong = {k: (getattr(config, k), v) for k, v in found.items() if getattr(config, k) != v}
        if wrong:
            detail = ", ".join(f"{k}={a} but the tensors say {b}" for k, (a, b) in wrong.items())
            raise UserError(f"{hparams_path} does not match the checkpoint: {detail}")
        return config
    # nshepperd's runs carry no hparams.json. Every published GPT-2 uses 64-wide heads.
    n_head = max(1, n_embd // 64)
    notes.append(f"no hparams.json: sizes inferred from the tensors (n_head = n_embd / 64 = {n_head})")
    try:
        return GPTConfig(n_vocab=n_vocab, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=n_layer)
    except MalformedConfig as e:  # shapes no GPT-2 has (no blocks, an empty embedding)
        raise UserError(
            f"{ckpt.prefix}.index describes no usable GPT-2 ({e}): the checkpoint is corrupted; "
            f"download or copy it again"
        ) from None


def load_tf(folder: Path, checkpoint: str | None, notes: list[str]) -> tuple[GPTConfig, dict[str, torch.Tensor], str]:
    prefix = checkpoint_prefix(folder, checkpoint)
    ckpt = TFCheckpoint(prefix)
    config = _infer_config(ckpt, folder, notes)
    sd: dict[str, torch.Tensor] = {}

    def get(name: str) -> np.ndarray:
        if name not in ckpt.entries:
            raise UserError(f"{prefix}.index lacks the variable {name}: the checkpoint is incomplete")
        return ckpt.read(name)

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(get(name), dtype=np.float32))  # a view of the file when it is fp32

    sd["wte.weight"] = tensor("model/wte")
    sd["wpe.weight"] = tensor("model/wpe")
    for i in range(config.n_layer):
        for ln in ("ln_1", "ln_2"):
            sd[f"h.{i}.{ln}.weight"] = tensor(f"model/h{i}/{ln}/g")
            sd[f"h.{i}.{ln}.bias"] = tensor(f"model/h{i}/{ln}/b")
        for lin in _LINEAR:
            w = tensor(f"model/h{i}/{lin}/w")
            if w.ndim != 3 or w.shape[0] != 1:  # TF's Conv1D weights are (1, in, out)
                raise UserError(
                    f"{prefix}.index gives model/h{i}/{lin}/w the shape {tuple(w.shape)}, not (1, in, out): "
                    f"the checkpoint is corrupted"
                )
            sd[f"h.{i}.{lin.replace('/', '.')}.weight"] = w[0].t()  # (out, in) view; converted (and released) later
            sd[f"h.{i}.{lin.replace('/', '.')}.bias"] = tensor(f"model/h{i}/{lin}/b")
    sd["ln_f.weight"] = tensor("model/ln_f/g")
    sd["ln_f.bias"] = tensor("model/ln_f/b")
    counter = folder / "counter"
    if counter.is_file():
        notes.append(f"gpt-2-simple/nshepperd run at step {counter.read_text().strip()}")
    return config, sd, prefix.name
