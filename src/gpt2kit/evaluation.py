"""`perplexity`: how well a model predicts a text file or a token dataset (`gpt2kit perplexity`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.extract import ReadOptions, documents
from .data.tokens import is_token_file, read_tokens
from .errors import UserError
from .lm import LM
from .model import GPT


@dataclass(frozen=True)
class Perplexity:
    path: Path
    tokens: int
    loss: float  # mean next-token cross-entropy, nats per token

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def perplexity(lm: LM, path: str | Path, *, context_length: int | None = None) -> Perplexity:
    """Score every token of `path` once, in windows of `context_length` tokens (None or 0: the model's
    context, which is also the most). A text file is read as `encode` reads it: <|endoftext|> after
    each document, so a file and its token dataset score the same."""
    if context_length is not None and context_length < 0:
        raise UserError(f"context_length must be a number of tokens (0: the model's context), got {context_length}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    tokens = read_tokens(path) if is_token_file(path) else _encode_documents(lm, path)
    if tokens.size < 2:
        raise UserError(f"{path} has fewer than 2 tokens")
    window = min(context_length or lm.config.n_ctx, lm.config.n_ctx)
    return Perplexity(path, int(tokens.size), strided_loss(lm.model, tokens, window, lm.device))


def _encode_documents(lm: LM, path: Path) -> np.ndarray:
    ids: list[int] = []
    for doc in documents(path, ReadOptions()):
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
        chunk = torch.from_numpy(np.asarray(tokens[s:s + T + 1], dtype=np.int64))  # (T + 1,)
        x, y = chunk[:-1].unsqueeze(0).to(device), chunk[1:].unsqueeze(0).to(device)  # (1, T) each
        total += F.cross_entropy(model(x).float()[0], y[0], reduction="sum").item()
        count += y.numel()
    return total / count
