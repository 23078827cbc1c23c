"""Fuzz the token-dataset readers: gpt2kit's header, nanoGPT .bin and gpt-2-simple .npz.
The first byte picks the file's suffix (so one corpus covers all three), the rest is the file."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_common import main, scratch  # noqa: E402

SUFFIXES = (".tokens", ".bin", ".npz")


def check(data: bytes) -> None:
    from gpt2kit.data.tokens import dataset_info, read_tokens
    from gpt2kit.errors import UserError

    if not data:
        return
    path = scratch() / f"data{SUFFIXES[data[0] % len(SUFFIXES)]}"
    path.write_bytes(data[1:])
    try:
        tokens = read_tokens(path)
        info = dataset_info(path)
    except UserError:
        return
    # What training relies on: a 1-D array of non-negative integer ids, as many as the info says.
    if tokens.ndim != 1 or tokens.dtype.kind not in "ui" or info["tokens"] != tokens.size:
        raise AssertionError(f"read_tokens gave {tokens.dtype} {tokens.shape}, info {info}")
    if tokens.size and int(tokens.min()) < 0:
        raise AssertionError(f"read_tokens gave a negative token id {int(tokens.min())}")


if __name__ == "__main__":
    main(check)
