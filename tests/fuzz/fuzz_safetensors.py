"""Fuzz a Hugging Face folder's model.safetensors (header length, JSON header, dtypes, shapes, offsets)
through gpt2kit's loader and shape checks, with a valid config.json for a tiny model beside it.

safetensors parses in Rust, which atheris does not see, so coverage alone rarely gets a mutated JSON
header past the length prefix: half the mutations edit the header text and write its length again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import random  # noqa: E402
import struct  # noqa: E402

from fuzz_common import main, scratch  # noqa: E402

# The model the seed corpus holds (make_seeds.py): 1 layer, 8 wide, a 16-token vocabulary.
TINY = {"model_type": "gpt2", "vocab_size": 16, "n_positions": 8, "n_embd": 8, "n_head": 2, "n_layer": 1}


def check(data: bytes) -> None:
    from gpt2kit.errors import UserError
    from gpt2kit.formats import build_model
    from gpt2kit.formats.huggingface import load_hf

    folder = scratch() / "hf"
    folder.mkdir(exist_ok=True)
    if not (folder / "config.json").exists():
        (folder / "config.json").write_text(json.dumps(TINY))
    (folder / "model.safetensors").write_bytes(data)
    try:
        config, sd = load_hf(folder)
        build_model(config, sd, folder)
    except UserError:
        pass


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris

    rng = random.Random(seed)
    if len(data) >= 8 and rng.random() < 0.5:
        (n,) = struct.unpack_from("<Q", data)
        if 8 + n <= len(data):
            header = atheris.Mutate(data[8 : 8 + n], n + 64)
            return (struct.pack("<Q", len(header)) + header + data[8 + n :])[: max(max_size, 8 + len(header))]
    return atheris.Mutate(data, max_size)


if __name__ == "__main__":
    main(check, mutate)
