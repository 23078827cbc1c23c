"""`perplexity`: how well a model predicts a text file or a token dataset (`gpt2kit perplexity`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.extract import ReadOptions, documents
from .data.tokens import check_ids, describe_folder, is_token_file, read_tokens
from .errors import UserError
from .lm import LM
from .model import GPT
from .options import EncodeOptions


@dataclass(frozen=True)
class Perplexity:
    path: Path
    tokens: int
    loss: float  # mean next-token cross-entropy, nats per token

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def perplexity(
    lm: LM,
    path: str | Path,
    *,
    context_length: int | None = None,
    encoding: str = EncodeOptions.encoding,
    errors: str = EncodeOptions.errors,
) -> Perplexity:
    """Score every token of `path` once, in windows of `context_length` tokens (None or 0: the model's
    context, which is also the most). A text file is read as `encode` reads it (`encoding`, `errors`):
    <|endoftext|> after each document, so a file and its token dataset score the same."""
    check_context_length(context_length)
    path = check_input(path)
    tokens = input_tokens(lm, path, read_options(encoding, errors))
    return score(lm, path, tokens, context_length)


def check_context_length(context_length: int | None) -> None:
    if context_length is not None and context_length < 0:
        raise UserError(f"context_length must be a number of tokens (0: the model's context), got {context_length}")


def read_options(encoding: str = EncodeOptions.encoding, errors: str = EncodeOptions.errors) -> ReadOptions:
    """How text files are read: `encode`'s options and their one check."""
    EncodeOptions(encoding=encoding, errors=errors)
    return ReadOptions(encoding=encoding, errors=errors)


def check_input(path: str | Path) -> Path:
    """`path` is a file to score (checked before a model loads), else a UserError saying what is there."""
    path = Path(path)
    if path.is_dir():  # not read as a corpus: which of its files to score is the user's choice
        example = f", such as {path / '*'}" if any(path.iterdir()) else ""
        raise UserError(
            f"{path} is a folder, and {describe_folder(path)}; perplexity scores files: give text files "
            f"or token datasets (.tokens, .npz, .bin){example}"
        )
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a regular file; give a text file or a token dataset (.tokens, .npz, .bin)")
    if not path.is_file():
        raise UserError(f"{path} does not exist; check the path (a text file or a token dataset)")
    return path


def input_tokens(lm: LM, path: Path, opts: ReadOptions) -> np.ndarray:
    """The tokens of a text file or a token dataset, checked against the model: ids in its vocabulary, 2 or more."""
    dataset = is_token_file(path)
    if dataset:
        tokens = read_tokens(path)
        check_ids(tokens, lm.config.n_vocab, path)
    else:
        tokens = _encode_documents(lm, path, opts)
    if tokens.size < 2:
        what = "encode more text into it" if dataset else "give a file with some text in it"
        raise UserError(
            f"{path} has only {tokens.size} token(s), and perplexity needs at least 2 (the first "
            f"predicts the second): {what}"
        )
    return tokens


def score(lm: LM, path: Path, tokens: np.ndarray, context_length: int | None = None) -> Perplexity:
    window = min(context_length or lm.config.n_ctx, lm.config.n_ctx)
    return Perplexity(path, int(tokens.size), strided_loss(lm.model, tokens, window, lm.device))


def _encode_documents(lm: LM, path: Path, opts: ReadOptions) -> np.ndarray:
    ids: list[int] = []
    for doc in documents(path, opts):
        ids += lm.tokenizer.encode(doc) + [lm.tokenizer.eot_id]
    return np.asarray(ids, dtype=np.int64)


@torch.no_grad()
def strided_loss(model: GPT, tokens: np.ndarray, window: int, device: torch.device) -> float:
    """Mean loss over non-overlapping windows covering all of `tokens`: every token scored once.

    Each window starts from an empty context, so this is a little higher than a sliding window's
    loss would be; it costs one forward pass per `window` tokens instead of one per token.
    """
    model.eval()
    T = min(window, tokens.size - 1)
    total, count = 0.0, 0
    for s in range(0, tokens.size - 1, T):
        chunk = torch.from_numpy(np.asarray(tokens[s : s + T + 1], dtype=np.int64))  # (T + 1,)
        x, y = chunk[:-1].unsqueeze(0).to(device), chunk[1:].unsqueeze(0).to(device)  # (1, T) each
        total += F.cross_entropy(model(x).float()[0], y[0], reduction="sum").item()
        count += y.numel()
    return total / count
