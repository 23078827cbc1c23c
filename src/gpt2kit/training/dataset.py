"""A run's training and validation tokens: a token file as it is, text encoded once into the datasets cache.

The cache is keyed by the files' content, the tokenizer and the held-out fraction, so the same text is
encoded once whatever its path; under torchrun only the main process encodes, the others wait for it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from ..data.encode import encode_dataset, val_path_for
from ..data.extract import expand_inputs
from ..data.tokens import is_token_file, read_tokens
from ..errors import UserError
from ..paths import datasets_dir
from ..tokenizer import Tokenizer
from .distributed import barrier
from .options import TrainOptions

log = logging.getLogger("gpt2kit")


def prepare_dataset(
    dataset, opts: TrainOptions, tokenizer: Tokenizer, is_main: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """(train, validation or None): a token file as it is; text inputs are encoded first, cached by content hash.
    Validation is --val-dataset (tokens or text, likewise), else the --val-fraction held out of the dataset."""
    items = [dataset] if isinstance(dataset, (str, Path)) else list(dataset)
    if not items:
        raise UserError("no dataset given")
    paths = [Path(p) for p in items]
    if len(paths) > 1 and any(p.is_file() and is_token_file(p) for p in paths):
        raise UserError(
            "--dataset takes one token file, or text files, folders and globs (encoded together); "
            "to train on several token files, encode their text together with `gpt2kit encode`"
        )
    val = _validation(opts, tokenizer, is_main)
    if len(paths) == 1 and paths[0].is_file() and is_token_file(paths[0]):
        train = read_tokens(paths[0])
        if val is None and opts.val_fraction:
            cut = int(train.size * (1 - opts.val_fraction))
            train, val = train[:cut], train[cut:]
        return train, val
    cached = _encoded(items, tokenizer, opts.val_fraction, opts.progress, is_main)
    if val is None and opts.val_fraction:
        val = read_tokens(val_path_for(cached))
    return read_tokens(cached), val


def _validation(opts: TrainOptions, tokenizer: Tokenizer, is_main: bool) -> np.ndarray | None:
    if not opts.val_dataset:
        return None
    path = Path(opts.val_dataset)
    if path.is_file() and is_token_file(path):
        return read_tokens(path)
    return read_tokens(_encoded([opts.val_dataset], tokenizer, 0.0, opts.progress, is_main))


def _encoded(items: list, tokenizer: Tokenizer, val_fraction: float, progress: bool, is_main: bool) -> Path:
    """Text files, folders and globs encoded once into the datasets cache, keyed by their content."""
    files = expand_inputs(items)
    h = hashlib.sha256(f"{tokenizer.source}|{tokenizer.n_vocab}|{val_fraction}".encode())
    for f in files:
        h.update(str(f.resolve()).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    cached = datasets_dir() / f"{h.hexdigest()[:20]}.tokens"
    if is_main and not cached.is_file():
        log.info("encoding %d file(s) into %s", len(files), cached)
        encode_dataset(files, cached, val_fraction=val_fraction, tokenizer=tokenizer, progress=progress)
    elif is_main:
        log.info("using the encoded dataset cached at %s", cached)
    barrier()
    return cached
