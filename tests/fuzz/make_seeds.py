"""Write the seed corpora (small valid files of each format) under tests/fuzz/corpus/. Run once; the
output is committed. The fuzzers mutate these, so they reach past the magic numbers at once."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from fuzz_safetensors import TINY  # noqa: E402
from fuzz_tokens import SUFFIXES  # noqa: E402


def tf_index(out: Path) -> None:
    fixtures = HERE.parent / "fixtures"
    shutil.copyfile(fixtures / "openai_tiny" / "model.ckpt.index", out / "openai_tiny.index")
    for run in ("gpt2_simple_run", "nshepperd_run"):
        for index in sorted((fixtures / run / "run1").glob("*.index"))[:1]:
            shutil.copyfile(index, out / f"{run}.index")


def safetensors(out: Path) -> None:
    from gpt2kit.config import GPTConfig
    from gpt2kit.formats import save_hf
    from gpt2kit.model import GPT

    config = GPTConfig(
        n_vocab=TINY["vocab_size"],
        n_ctx=TINY["n_positions"],
        n_embd=TINY["n_embd"],
        n_head=TINY["n_head"],
        n_layer=TINY["n_layer"],
    )
    torch.manual_seed(0)
    folder = out / "tmp"
    save_hf(folder, config, GPT(config).state_dict())
    (folder / "model.safetensors").rename(out / "tiny_f32.safetensors")
    save_hf(folder, config, GPT(config).state_dict(), dtype=torch.bfloat16)
    (folder / "model.safetensors").rename(out / "tiny_bf16.safetensors")
    shutil.rmtree(folder)


def tokens(out: Path) -> None:
    from gpt2kit.data.tokens import TokenWriter

    ids = np.arange(0, 50257, 997, dtype=np.int64)
    for n_vocab, name in ((50257, "u16"), (100_000, "u32")):
        writer = TokenWriter(out / "tmp.tokens", n_vocab)
        writer.write(ids, docs=2)
        writer.close()
        (out / f"gpt2kit_{name}").write_bytes(bytes([SUFFIXES.index(".tokens")]) + (out / "tmp.tokens").read_bytes())
    (out / "tmp.tokens").unlink()
    (out / "nanogpt_bin").write_bytes(bytes([SUFFIXES.index(".bin")]) + ids.astype("<u2").tobytes())
    buf = io.BytesIO()
    np.savez_compressed(buf, ids[:20].astype(np.int32), ids[20:].astype(np.int32))
    (out / "gpt2_simple_npz").write_bytes(bytes([SUFFIXES.index(".npz")]) + buf.getvalue())


if __name__ == "__main__":
    for name, make in (("tf_index", tf_index), ("safetensors", safetensors), ("tokens", tokens)):
        folder = HERE / "corpus" / name
        folder.mkdir(parents=True, exist_ok=True)
        make(folder)
