"""The LM watermark of Kirchenbauer et al. 2023 ("A Watermark for Large Language Models"), seeded as
transformers seeds it, so that each side detects the other's text.

Generation (`Watermark`, a stage of the sampling pipeline): after token t, a keyed "green list" of
⌊γ·V⌋ token ids is drawn, and δ is added to their logits. Detection (`detect`): count the tokens that are
green after their predecessor. Unmarked text holds Binomial(T, γ) of them, so z = (green - γT) / √(Tγ(1-γ))
says how far a text is from unmarked. It needs the token ids and the key, not the model.

transformers' "lefthash" scheme (WatermarkLogitsProcessor, WatermarkDetector): the green list after token t
is the first ⌊γ·V⌋ ids of torch.randperm(V) drawn by a CPU generator seeded with key·t mod (2^64 - 1), V the
vocabulary (GPT-2's 50,257). Only the last token seeds it; the context width is how many tokens come before
the first one marked or scored. The permutation is PyTorch's own: transformers run on a GPU draws its lists
with a CUDA generator, which gives other lists than these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

from ..errors import UserError
from ..options import DetectOptions, SamplingSettings

GPT2_VOCAB = 50257  # what both sides permute: the tokenizer's vocabulary (transformers: config.vocab_size)
GPT2_EOT = 50256  # <|endoftext|>, GPT-2's BOS: a leading one is not scored, as transformers' detector drops it
_SEED_MOD = 2**64 - 1  # transformers: manual_seed(seed % (2**64 - 1))


@lru_cache(maxsize=4096)
def _green_bits(seed: int, vocab_size: int, size: int) -> np.ndarray:
    """The first `size` ids of torch.randperm(vocab_size) from a CPU generator seeded with `seed`, as packed bits
    (⌈V/8⌉ bytes, read-only). Kept because one permutation of GPT-2's vocabulary takes 6 ms on a 2-core CPU,
    longer than a decoding step, and a text repeats its tokens; 4096 lists take 26 MB."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    mask = np.zeros(vocab_size, dtype=bool)
    mask[torch.randperm(vocab_size, generator=g)[:size].numpy()] = True
    bits = np.packbits(mask)
    bits.flags.writeable = False
    return bits


def green_mask(key: int, gamma: float, previous: int, vocab_size: int = GPT2_VOCAB) -> np.ndarray:
    """Which token ids are green after token `previous` under `key`: (V,) bool."""
    return np.unpackbits(_bits(key, gamma, previous, vocab_size), count=vocab_size).astype(bool)


def is_green(key: int, gamma: float, previous: int, token: int, vocab_size: int = GPT2_VOCAB) -> bool:
    bits = _bits(key, gamma, previous, vocab_size)
    return bool(bits[token >> 3] >> (7 - (token & 7)) & 1)  # packbits puts an id's bit big-end first


def _bits(key: int, gamma: float, previous: int, vocab_size: int) -> np.ndarray:
    return _green_bits(key * previous % _SEED_MOD, vocab_size, int(vocab_size * gamma))


class Watermark:
    """The pipeline stage: δ added to the green list of each row, drawn from the row's last token. A row with
    fewer tokens than the context width is left as it is, as transformers leaves it. Stateless: the list
    depends on the row's tokens alone. transformers applies it after every other processor (temperature,
    top-k and top-p included), so its place is the pipeline's end."""

    name = "watermark"

    def __init__(self, vocab_size: int = GPT2_VOCAB):
        self.vocab_size = vocab_size

    def wants(self, s: SamplingSettings) -> bool:
        return s.watermark_key is not None

    def apply(self, logits: torch.Tensor, s: SamplingSettings, seqs: list) -> torch.Tensor:
        """logits (B, V) of rows sharing `s` -> the same with δ on each row's green ids."""
        rows = [i for i, seq in enumerate(seqs) if len(seq.tokens) >= s.watermark_context_width]
        if not rows:
            return logits
        if logits.size(-1) < self.vocab_size:
            raise ValueError(
                f"logits have {logits.size(-1)} columns, fewer than the {self.vocab_size} token ids "
                f"the watermark draws from"
            )
        green = np.zeros(logits.shape, dtype=bool)  # (B, V): a padded vocabulary's extra ids are never green
        for i in rows:
            green[i, : self.vocab_size] = green_mask(
                s.watermark_key, s.watermark_gamma, int(seqs[i].tokens[-1]), self.vocab_size
            )
        # logits + δ where green: the one float addition transformers makes, so the two agree bit for bit
        return torch.where(torch.from_numpy(green).to(logits.device), logits + s.watermark_delta, logits)


@dataclass(frozen=True)
class Detection:
    """What `detect` found in one text."""

    scored: int  # tokens scored: all but the first context_width (and a leading <|endoftext|>)
    green: int  # of those, how many are on their predecessor's green list
    gamma: float
    z: float  # (green - γT) / √(Tγ(1-γ)): standard deviations above what unmarked text holds
    p_value: float  # one-sided: the chance of a z at least this high in text without this watermark
    z_threshold: float

    @property
    def watermarked(self) -> bool:
        return self.z > self.z_threshold

    @property
    def verdict(self) -> str:
        return "watermarked" if self.watermarked else "not watermarked"

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "green_fraction": self.green / self.scored,
            "watermarked": self.watermarked,
            "verdict": self.verdict,
        }


def detect(
    token_ids: Iterable[int],
    *,
    key: int | None,
    gamma: float = DetectOptions.watermark_gamma,
    context_width: int = DetectOptions.watermark_context_width,
    z_threshold: float = DetectOptions.z_threshold,
    ignore_repeated_ngrams: bool = DetectOptions.ignore_repeated_ngrams,
    vocab_size: int = GPT2_VOCAB,
) -> Detection:
    """Score `token_ids` (the text's tokens, best without its prompt) for the watermark of `key`: every token
    after the first `context_width` is green or not after its predecessor, as transformers' WatermarkDetector
    counts them (repeats included, unless ignore_repeated_ngrams: each distinct run of context_width + 1
    tokens once). Watermarked when z > z_threshold."""
    DetectOptions(
        watermark_key=key, watermark_gamma=gamma, watermark_context_width=context_width, z_threshold=z_threshold
    )  # the ranges' one check
    ids = [int(t) for t in token_ids]
    if bad := [t for t in ids if not 0 <= t < vocab_size]:
        raise UserError(f"token id {bad[0]} is not in the vocabulary (0 to {vocab_size - 1})")
    if ids and ids[0] == GPT2_EOT:
        ids = ids[1:]
    if len(ids) - context_width < 1:
        raise UserError(
            f"the text has {len(ids)} token(s), and detection scores those after the first "
            f"{context_width} (the context width): give a longer text (200 tokens decide reliably)"
        )
    ngrams = [tuple(ids[i - context_width : i + 1]) for i in range(context_width, len(ids))]
    if ignore_repeated_ngrams:
        ngrams = list(dict.fromkeys(ngrams))  # the first of each, in order
    scored = len(ngrams)
    green = sum(is_green(key, gamma, g[-2], g[-1], vocab_size) for g in ngrams)
    z = (green - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))
    # The normal tail exactly; transformers' p-value uses a rough closed form of it, its z is the same.
    return Detection(scored, green, gamma, z, 0.5 * math.erfc(z / math.sqrt(2)), z_threshold)
