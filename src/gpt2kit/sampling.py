"""Sampling: small functions logits -> logits, run as one ordered pipeline of stages, then one draw per row.

Each row draws from its own torch.Generator, so a sample's text depends on its seed alone, not on the
batch it shares or on the global RNG. A stage that keeps per-row state keeps it in its sequence's
`state`, updated only after the row's draw (`accept`), so running a stage twice changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import torch

# Defined beside the other options, free of torch, so the CLI builds its help without loading PyTorch.
from .options import SamplingSettings  # noqa: F401 (part of this module's API)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature if temperature not in (0.0, 1.0) else logits


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (B, V)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    # stable: of tied logits the earlier in the row goes first, so which of them stay never depends on the sort
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1, stable=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) >= p  # mass before this token already reaches p
    # The top token always stays, even for a p so small that it rounds to 0 in float32 (p=5e-324 dropped
    # every token and failed the draw: found by the API fuzzer).
    drop[..., 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): seen tokens' positive logits / penalty, negative ones * penalty.

    seen: (B, V) bool, the tokens of each row's prompt and output so far.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_presence_frequency(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties: minus presence once per generated token type, minus frequency per occurrence."""
    if presence == 0.0 and frequency == 0.0:
        return logits
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts.to(logits.dtype)


def apply_logit_bias(logits: torch.Tensor, bias: tuple[tuple[int, float], ...]) -> torch.Tensor:
    """OpenAI's logit_bias: add each (token id, bias) to that token's logit in every row (B, V).

    On raw logits, whose spread is a few tens at most, +100 makes the token all but certain and -100
    all but impossible, as OpenAI documents; values between shift its odds."""
    if not bias:
        return logits
    ids = torch.tensor([t for t, _ in bias], dtype=torch.long, device=logits.device)  # (N,)
    values = torch.tensor([b for _, b in bias], dtype=logits.dtype, device=logits.device)  # (N,)
    return logits.index_add(-1, ids, values.expand(logits.size(0), -1))


class Stage(Protocol):
    """One entry of the pipeline (pipeline.PIPELINE). Rows of one call share settings `s`; seqs[i] is row i's
    sequence (gpt2kit.sequence.Sequence: .ids, .tokens, .generator, .state)."""

    name: str

    def wants(self, s: SamplingSettings) -> bool: ...  # on for these settings?

    def apply(self, logits: torch.Tensor, s: SamplingSettings, seqs: list) -> torch.Tensor: ...  # (B, V) -> (B, V)


class Penalties:
    """CTRL's repetition penalty and OpenAI's presence/frequency penalties. Per row: the tokens seen (prompt
    and output, for CTRL) and the generated tokens' counts (for OpenAI's), made at the row's first step."""

    name = "penalties"

    def wants(self, s: SamplingSettings) -> bool:
        return s.repetition_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0

    def start(self, s: SamplingSettings, seq, n_vocab: int, device) -> None:
        seen = counts = None
        if s.repetition_penalty != 1.0:
            seen = torch.zeros(n_vocab, dtype=torch.bool, device=device)  # (V,)
            seen[torch.tensor(seq.tokens, dtype=torch.long, device=device)] = True
        if s.presence_penalty != 0.0 or s.frequency_penalty != 0.0:
            counts = torch.zeros(n_vocab, dtype=torch.int32, device=device)  # (V,)
            generated = seq.tokens[len(seq.ids) :]
            if generated:
                counts.index_add_(
                    0,
                    torch.tensor(generated, device=device),
                    torch.ones(len(generated), dtype=torch.int32, device=device),
                )
        seq.state[self.name] = (seen, counts)

    def apply(self, logits: torch.Tensor, s: SamplingSettings, seqs: list) -> torch.Tensor:
        for seq in seqs:
            if self.name not in seq.state:
                self.start(s, seq, logits.size(-1), logits.device)
        if s.repetition_penalty != 1.0:
            seen = torch.stack([seq.state[self.name][0] for seq in seqs])  # (B, V)
            logits = apply_repetition_penalty(logits, seen, s.repetition_penalty)
        if s.presence_penalty != 0.0 or s.frequency_penalty != 0.0:
            counts = torch.stack([seq.state[self.name][1] for seq in seqs])  # (B, V)
            logits = apply_presence_frequency(logits, counts, s.presence_penalty, s.frequency_penalty)
        return logits

    def accept(self, s: SamplingSettings, seq, token: int) -> None:
        seen, counts = seq.state[self.name]
        if seen is not None:
            seen[token] = True
        if counts is not None:
            counts[token] += 1


class LogitBias:
    name = "logit_bias"

    def wants(self, s: SamplingSettings) -> bool:
        return bool(s.logit_bias)

    def apply(self, logits: torch.Tensor, s: SamplingSettings, seqs: list) -> torch.Tensor:
        return apply_logit_bias(logits, s.logit_bias)


class Temperature:
    name = "temperature"

    def wants(self, s: SamplingSettings) -> bool:
        return s.temperature not in (0.0, 1.0)

    def apply(self, logits: torch.Tensor, s: SamplingSettings, seqs: list) -> torch.Tensor:
        return apply_temperature(logits, s.temperature)


class TopK:
    name = "top_k"

    def wants(self, s: SamplingSettings) -> bool:
        return s.temperature > 0 and s.top_k > 0 and not s.mirostat  # greedy takes the top token whatever is cut

    def apply(self, logits: torch.Tensor, s: SamplingSettings, seqs: list) -> torch.Tensor:
        return apply_top_k(logits, s.top_k)


class TopP:
    name = "top_p"

    def wants(self, s: SamplingSettings) -> bool:
        return s.temperature > 0 and s.top_p < 1.0 and not s.mirostat  # mirostat does the truncating then

    def apply(self, logits: torch.Tensor, s: SamplingSettings, seqs: list) -> torch.Tensor:
        return apply_top_p(logits, s.top_p)


# The stages draw_top_k computes on the k candidates alone, for settings that use no other.
TOP_K_SHORTCUT = frozenset({"logit_bias", "temperature", "top_k", "top_p"})


class NonFiniteLogits(ValueError):
    """A row of logits holds NaN or +inf, or nothing finite: no token can be drawn from it honestly."""


def check_finite(logits: torch.Tensor) -> None:
    """Refuse rows no distribution comes from (B, V), rather than draw a silent wrong token."""
    # One pass for the usual case: a row's max is finite unless it holds NaN or +inf, or nothing finite.
    if bool(torch.isfinite(logits.amax(-1)).all()):
        return
    nan, pos_inf = torch.isnan(logits).any(-1), torch.isposinf(logits).any(-1)
    bad = nan | pos_inf | torch.isneginf(logits).all(-1)
    row = int(bad.nonzero()[0, 0])
    what = "NaN" if nan[row] else "+inf" if pos_inf[row] else "no finite logit"
    raise NonFiniteLogits(
        f"row {row} of the logits has {what}: the model's numbers broke down "
        f"(try --dtype float32), and no token is drawn from it"
    )


def draw(logits: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row (B,). Greedy at temperature 0; else inverse-CDF with each row's own generator."""
    check_finite(logits)
    if temperature == 0:
        return logits.argmax(-1)
    probs = logits.softmax(-1)  # (B, V)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(probs.device)  # (B,)
    cdf = probs.cumsum(-1)
    u = u * cdf[:, -1]  # the cumsum's last value is 1 up to rounding
    tokens = torch.searchsorted(cdf, u.unsqueeze(-1)).squeeze(-1)
    # Rounding can land on a zero-probability token past the end; the argmax is the safe choice then.
    bad = (tokens >= probs.size(-1)) | (
        probs.gather(-1, tokens.clamp(max=probs.size(-1) - 1).unsqueeze(-1)).squeeze(-1) == 0
    )
    return torch.where(bad, probs.argmax(-1), tokens.clamp(max=probs.size(-1) - 1))


def draw_top_k(
    logits: torch.Tensor, s: SamplingSettings, generators: list[torch.Generator], topk: Callable | None = None
) -> torch.Tensor:
    """The pipeline's draw for settings with top_k > 0, temperature > 0 and no stage but TOP_K_SHORTCUT's, on
    the k candidates only: the same distribution and the same inverse-CDF walk in vocabulary order, without
    five passes over all 50257 logits. topk(logits, n) -> (values, ids), largest first: the model's own
    (cpu/topk.py), torch.topk where None."""
    logits = apply_logit_bias(logits.float(), s.logit_bias)  # before choosing the k: a bias can bring a token in
    k = min(s.top_k, logits.size(-1))
    # One more than k: the (k+1)-th equals the k-th exactly when more than k logits reach the k-th, with no
    # second pass over the vocabulary to count them.
    n = min(k + 1, logits.size(-1))
    values, ids = topk(logits, n) if topk is not None else torch.topk(logits, n, dim=-1)  # (B, n), largest first
    tied = values.size(-1) > k and bool((values[:, k] == values[:, k - 1]).any())
    values, ids = values[:, :k], ids[:, :k]
    if tied:
        # Ties with the k-th logit: top-k keeps them all (as transformers does), more than k candidates.
        plain = dataclasses.replace(s, logit_bias=())
        for stage in (Temperature(), TopK(), TopP()):
            logits = stage.apply(logits, plain, []) if stage.wants(plain) else logits
        return draw(logits, s.temperature, generators)
    ids, order = ids.sort(dim=-1)  # vocabulary order, as draw() walks the CDF and top-p breaks ties
    values = apply_top_p(apply_temperature(values.gather(-1, order), s.temperature), s.top_p)
    picked = draw(values, s.temperature, generators)  # (B,) index into the k
    return ids.gather(-1, picked.unsqueeze(-1)).squeeze(-1)


def make_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g
