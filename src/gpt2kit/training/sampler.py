"""Random training windows from a token stream, resumable to the exact window.

Every process draws the same global batch from one generator and takes its own slice, so N
processes with batch b see exactly the windows one process with batch N*b would.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError


class WindowSampler:
    def __init__(
        self,
        tokens: np.ndarray,
        context_length: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        noise: float = 0.0,
        n_vocab: int = 50257,
    ):
        if tokens.size < 2:
            raise UserError("the dataset has fewer than 2 tokens: there is nothing to train on")
        # A dataset shorter than the context trains on shorter windows rather than failing.
        self.T = min(context_length, tokens.size - 1)
        self.tokens, self.batch_size, self.rank, self.world_size = tokens, batch_size, rank, world_size
        self.noise, self.n_vocab = noise, n_vocab
        self.generator = torch.Generator().manual_seed(seed)
        self.noise_generator = torch.Generator().manual_seed(seed + 1)

    @property
    def n_windows(self) -> int:
        return self.tokens.size - self.T

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (batch_size, T) inputs and next-token targets for this process."""
        starts = torch.randint(0, self.n_windows, (self.batch_size * self.world_size,), generator=self.generator)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()
        chunk = torch.from_numpy(np.stack([np.asarray(self.tokens[s : s + self.T + 1], dtype=np.int64) for s in mine]))
        x, y = chunk[:, :-1], chunk[:, 1:]  # (B, T) each
        if self.noise:
            # nshepperd's --noise: replace a fraction of the *inputs* with random tokens (targets stay).
            swap = torch.rand(x.shape, generator=self.noise_generator) < self.noise
            x = torch.where(swap, torch.randint(0, self.n_vocab, x.shape, generator=self.noise_generator), x)
        return x, y

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "noise_generator": self.noise_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.noise_generator.set_state(state["noise_generator"])


def eval_windows(tokens: np.ndarray, context_length: int, batch_size: int, batches: int, seed: int = 0):
    """The same validation windows every time (spread evenly through the stream), so losses compare."""
    T = min(context_length, tokens.size - 1)
    n = max(tokens.size - T, 1)
    count = batches * batch_size
    starts = np.linspace(0, n - 1, num=count).astype(np.int64) if count > 1 else np.zeros(1, np.int64)
    for i in range(0, count, batch_size):
        chunk = torch.from_numpy(
            np.stack([np.asarray(tokens[s : s + T + 1], dtype=np.int64) for s in starts[i : i + batch_size]])
        )
        yield chunk[:, :-1], chunk[:, 1:]
