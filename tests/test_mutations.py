"""Corrupted model and dataset files: every variant loads or ends in a UserError (one line, exit 2 in the
CLI), quickly, never another exception. Variants are generated from the small fixtures: truncations
at many points, bit flips, absurd sizes in headers, empty and missing files."""

import random
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2kit.data.tokens import TokenWriter, read_tokens
from gpt2kit.errors import UserError
from gpt2kit.formats import read_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"


def variants(data: bytes, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """Truncations (including at every 8-byte boundary of the first 64), bit flips, absurd u64s."""
    out = [("empty", b"")] + [(f"cut{k}", data[:k]) for k in range(0, min(64, len(data)), 8)]
    for _ in range(n):
        kind = rng.choice(["cut", "flip", "u64"])
        at = rng.randrange(len(data))
        if kind == "cut":
            out.append((f"cut{at}", data[:at]))
        elif kind == "flip":
            b = bytearray(data)
            b[at] ^= 1 << rng.randrange(8)
            out.append((f"flip{at}", bytes(b)))
        else:
            at = rng.randrange(max(1, min(len(data) - 8, 4096)))
            out.append(
                (f"u64@{at}", data[:at] + struct.pack("<Q", rng.choice([2**63 - 1, 2**40, 2**32 + 7])) + data[at + 8 :])
            )
    return out


def loads_or_says_why(load, label: str) -> None:
    start = time.time()
    try:
        load()
    except UserError as e:
        assert "\n" not in str(e).strip(), (label, str(e))
    assert time.time() - start < 10, f"{label} took {time.time() - start:.1f} s"


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_mutated_hugging_face_folders(hf_tiny, tmp_path, name):
    rng = random.Random(name)
    original = (hf_tiny / name).read_bytes()
    n = 120 if name == "model.safetensors" else 40
    for label, data in variants(original, rng, n):
        folder = tmp_path / "m"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(hf_tiny, folder)
        (folder / name).write_bytes(data)
        loads_or_says_why(lambda: read_checkpoint(folder), f"{name} {label}")


@pytest.mark.parametrize("name", ["model.ckpt.index", "model.ckpt.data-00000-of-00001", "hparams.json", "checkpoint"])
def test_mutated_tensorflow_checkpoints(tmp_path, name):
    rng = random.Random(name)
    src = FIXTURES / "openai_tiny"
    original = (src / name).read_bytes()
    for label, data in variants(original, rng, 80):
        folder = tmp_path / "m"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(src, folder)
        (folder / name).write_bytes(data)
        loads_or_says_why(lambda: read_checkpoint(folder), f"{name} {label}")


def test_missing_files_and_symlink_loops(hf_tiny, tmp_path):
    for name in ("model.safetensors", "config.json"):
        folder = tmp_path / f"no-{name}"
        shutil.copytree(hf_tiny, folder)
        (folder / name).unlink()
        loads_or_says_why(lambda: read_checkpoint(folder), f"missing {name}")
    loop = tmp_path / "loop"
    shutil.copytree(hf_tiny, loop)
    (loop / "model.safetensors").unlink()
    (loop / "model.safetensors").symlink_to(loop / "model.safetensors")
    loads_or_says_why(lambda: read_checkpoint(loop), "symlink loop")


def test_mutated_token_datasets(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "d.tokens"
    w = TokenWriter(path, 50257)
    w.write(np.arange(300) % 50257)
    w.close()
    original = path.read_bytes()
    for label, data in variants(original, rng, 150):
        bad = tmp_path / "bad.tokens"
        bad.write_bytes(data)
        loads_or_says_why(lambda: np.asarray(read_tokens(bad)).sum(), f"tokens {label}")
