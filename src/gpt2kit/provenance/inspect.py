"""GLTR (Gehrmann, Strobelt and Rush, ACL 2019 demo): how expected each token of a text is under a model.

`inspect(lm, text)` scores every token once: its rank among the model's predictions (1: the top one), its
probability, the top prediction and that one's probability, and the entropy of the distribution. From those
come GLTR's four buckets (top 10, 100, 1000, the rest) and its histograms. The first token is predicted from
<|endoftext|>, as GPT-2 starts a document. Texts longer than the window go through a sliding window that
moves half a window at a time, so every token after the first window has at least half a window of context.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from ..options import InspectOptions

if TYPE_CHECKING:  # lm.py's LM.inspect calls this module: a type-only import keeps the two from a cycle
    from ..lm import LM

BUCKET_RANKS = (10, 100, 1000)  # GLTR's buckets: rank <= 10, <= 100, <= 1000, and the rest
BUCKET_NAMES = ("top 10", "top 100", "top 1000", "rest")
RATIO_BINS = 10  # GLTR's "frac(p)": p(token) / p(top prediction), in tenths
ENTROPY_BIN = 1.0  # nats per bin of the entropy histogram
ROWS_PER_PASS = 256  # rows of (T, V) probabilities worked on at once: 256 x 50,257 x 4 bytes = 51 MB each


@dataclass(frozen=True)
class Alternative:
    id: int
    text: str
    prob: float


@dataclass(frozen=True)
class TokenScore:
    id: int
    text: str  # the token's piece of the text (a character split across tokens shows with its last token)
    rank: int  # 1 + how many tokens the model found more likely
    prob: float
    top_id: int  # the model's top prediction here, and its probability
    top_text: str
    top_prob: float
    entropy: float  # of the model's distribution here, in nats
    alternatives: tuple[Alternative, ...] = ()  # the top predictions, most likely first

    @property
    def bucket(self) -> int:
        """0: top 10, 1: top 100, 2: top 1000, 3: the rest."""
        return bisect_left(BUCKET_RANKS, self.rank)


@dataclass(frozen=True)
class Histogram:
    edges: tuple[float, ...]  # bin i holds edges[i] <= x < edges[i + 1]; the last one its right edge too
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Inspection:
    """Every token of a text with its GLTR statistics, and their summary."""

    model: str
    window: int  # tokens of context a pass holds at most
    tokens: tuple[TokenScore, ...]

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    @property
    def buckets(self) -> tuple[int, ...]:
        """How many tokens fall in each of GLTR's buckets (BUCKET_NAMES)."""
        counts = [0] * len(BUCKET_NAMES)
        for t in self.tokens:
            counts[t.bucket] += 1
        return tuple(counts)

    @property
    def shares(self) -> tuple[float, ...]:
        return tuple(c / len(self.tokens) for c in self.buckets)

    @property
    def mean_log_rank(self) -> float:
        """GLTR's other statistic: the mean of ln(rank); generated text sits lower than human text."""
        return sum(math.log(t.rank) for t in self.tokens) / len(self.tokens)

    def histograms(self) -> dict[str, Histogram]:
        """GLTR's other two (the buckets are the first): p(token) / p(top) in tenths, and the entropy in nats."""
        entropies = [t.entropy for t in self.tokens]
        return {
            "ratio": _histogram([t.prob / t.top_prob for t in self.tokens], 1 / RATIO_BINS, RATIO_BINS),
            "entropy": _histogram(entropies, ENTROPY_BIN, max(1, math.ceil(max(entropies) / ENTROPY_BIN))),
        }

    def as_dict(self) -> dict:
        """JSON-ready: the tokens, then the summary (bucket shares, mean log-rank, histograms)."""
        histograms = {name: {"edges": list(h.edges), "counts": list(h.counts)} for name, h in self.histograms().items()}
        return {
            "model": self.model,
            "window": self.window,
            "text": self.text,
            "tokens": [{**asdict(t), "bucket": t.bucket} for t in self.tokens],
            "buckets": [
                {"name": n, "max_rank": r, "count": c, "share": s}
                for n, r, c, s in zip(BUCKET_NAMES, (*BUCKET_RANKS, None), self.buckets, self.shares)
            ],
            "mean_log_rank": self.mean_log_rank,
            "histograms": histograms,
        }


def _histogram(values: list[float], width: float, bins: int) -> Histogram:
    """Counts of `values` in `bins` bins of `width` from 0; the last bin takes its right edge (a ratio of 1)."""
    counts = [0] * bins
    for v in values:
        counts[min(max(math.floor(v / width + 1e-9), 0), bins - 1)] += 1  # 1e-9: 0.3 / 0.1 is 2.9999999999999996
    return Histogram(tuple(i * width for i in range(bins + 1)), tuple(counts))


@torch.inference_mode()
def inspect(
    lm: LM,
    text: str,
    *,
    context_length: int | None = InspectOptions.context_length,
    alternatives: int = InspectOptions.alternatives,
) -> Inspection:
    """GLTR's view of `text` under `lm`: each token's rank, probability, top prediction and entropy, with
    `alternatives` top predictions each. context_length: tokens per window (None or 0: the model's context)."""
    InspectOptions(context_length=context_length, alternatives=alternatives)  # the ranges' one check
    ids = lm.tokenizer.encode(text)
    if not ids:
        raise UserError("the text is empty: give some text to inspect")
    window = min(context_length or lm.config.n_ctx, lm.config.n_ctx)
    sequence = [lm.tokenizer.eot_id] + ids
    rows = []
    for first_input, first_target, end in windows(len(sequence), window):
        x = torch.tensor([sequence[first_input : end - 1]], device=lm.device)  # (1, T): the inputs
        # (end - first_target, V): one row per target; a vocabulary padded past the tokenizer's holds no tokens
        logits = lm.model(x)[0, first_target - 1 - first_input :, : lm.tokenizer.n_vocab]
        targets = torch.tensor(sequence[first_target:end], device=logits.device)
        for s in range(0, targets.numel(), ROWS_PER_PASS):
            rows += _score(logits[s : s + ROWS_PER_PASS].float(), targets[s : s + ROWS_PER_PASS], alternatives)
    pieces = _pieces(lm, ids)
    decode = lm.tokenizer.decode
    tokens = tuple(
        TokenScore(
            id=t,
            text=piece,
            rank=rank,
            prob=p,
            top_id=top[0][0],
            top_text=decode([top[0][0]]),
            top_prob=top[0][1],
            entropy=h,
            alternatives=tuple(Alternative(i, decode([i]), q) for i, q in top[:alternatives]),
        )
        for t, piece, (rank, p, h, top) in zip(ids, pieces, rows)
    )
    return Inspection(model=str(lm.info.get("name", "")), window=window, tokens=tokens)


def windows(n: int, window: int) -> Iterator[tuple[int, int, int]]:
    """(first input, first target, end) of each pass over a sequence of n tokens: inputs [first input, end - 1)
    predict targets [first target, end). Targets 1 .. n-1 are each scored once; the first pass holds `window`
    inputs, and each later one moves half a window, keeping at least the other half as context."""
    stride = max(1, window // 2)
    first_target = 1
    while first_target < n:
        end = min(n, first_target + (window if first_target == 1 else stride))
        yield max(0, end - 1 - window), first_target, end
        first_target = end


def _score(logits: torch.Tensor, targets: torch.Tensor, alternatives: int) -> list[tuple]:
    """(rank, probability, entropy, [(id, probability) of the top predictions]) of each row's target."""
    logp = logits.log_softmax(-1)  # (R, V)
    chosen = logp.gather(-1, targets.unsqueeze(-1))  # (R, 1)
    ranks = (logp > chosen).sum(-1) + 1  # ties count in the token's favour
    entropy = torch.special.entr(logp.exp()).sum(-1)  # -Σ p ln p, with 0 ln 0 = 0
    top = torch.topk(logp, max(1, alternatives), dim=-1)
    top_ids, top_p = top.indices.tolist(), top.values.exp().tolist()
    return [
        (r, math.exp(c), h, list(zip(i, p)))
        for r, c, h, i, p in zip(ranks.tolist(), chosen.squeeze(-1).tolist(), entropy.tolist(), top_ids, top_p)
    ]


def _pieces(lm: LM, ids: list[int]) -> list[str]:
    """Each token's piece of the text, which never splits a character: the pieces join to the decoded text."""
    decoder = lm.tokenizer.stream_decoder()
    pieces = [decoder.push(t) for t in ids]
    pieces[-1] += decoder.flush()
    return pieces
