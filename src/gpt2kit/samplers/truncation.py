"""The stateless truncations: min-p, typical, epsilon, eta and top-n-sigma.

Each is a pipeline stage (see order.py): `apply` maps logits (B, V) to logits, a filtered token getting -inf,
and keeps at least one token of every row. min-p, typical, epsilon and eta keep exactly the tokens
transformers' MinP/Typical/Epsilon/EtaLogitsWarper keep (tests/test_samplers.py), computed the same way in
float32 so that ties and near-ties fall the same side; top-n-sigma follows llama.cpp. Under mirostat they are
off: mirostat v2 does the truncating then, as in llama.cpp's common_sampler_init.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


class MinP:
    """Keep the tokens at least min_p times as likely as the likeliest (transformers' MinPLogitsWarper)."""

    name = "min_p"
    before_temperature = False

    def wants(self, s) -> bool:
        return s.temperature > 0 and s.min_p > 0 and not s.mirostat

    def apply(self, logits: torch.Tensor, s, seqs: list) -> torch.Tensor:
        # In probabilities, as transformers compares (llama.cpp compares logits to max + log(min_p): the same
        # set but for rounding); the likeliest token always passes, as p_max >= min_p * p_max.
        probs = logits.softmax(-1)  # (B, V)
        return logits.masked_fill(probs < s.min_p * probs.amax(-1, keepdim=True), NEG_INF)


class TypicalP:
    """Locally typical sampling (Meister et al. 2022): keep the tokens whose surprise -log p is nearest the
    row's entropy, the expected surprise, until their probability reaches typical_p (transformers'
    TypicalLogitsWarper). The likeliest token may go: a confident row's likeliest token is atypically unsurprising."""

    name = "typical_p"
    before_temperature = False

    def wants(self, s) -> bool:
        return s.temperature > 0 and s.typical_p < 1 and not s.mirostat

    def apply(self, logits: torch.Tensor, s, seqs: list) -> torch.Tensor:
        log_p = logits.log_softmax(-1)  # (B, V)
        entropy = -per_row(log_p * log_p.exp(), torch.nansum)  # (B, 1); nansum: 0 * -inf of filtered tokens
        distance = (-log_p - entropy).abs()  # (B, V): how far each token's surprise is from the expected one
        sorted_distance, order = distance.sort(-1)
        mass = logits.gather(-1, order).softmax(-1).cumsum(-1)  # (B, V), nearest first
        # The first token whose running mass reaches typical_p is the last kept; tokens tied with it in
        # distance stay too, so which of them the sort put first never matters.
        last = (mass < s.typical_p).sum(-1, keepdim=True).clamp(max=logits.size(-1) - 1)  # (B, 1)
        return logits.masked_fill(distance > sorted_distance.gather(-1, last), NEG_INF)


class EpsilonCutoff:
    """Epsilon-sampling (Hewitt et al. 2022): drop the tokens less likely than epsilon_cutoff, but never the
    likeliest (transformers' EpsilonLogitsWarper)."""

    name = "epsilon_cutoff"
    before_temperature = False

    def wants(self, s) -> bool:
        return s.temperature > 0 and s.epsilon_cutoff > 0 and not s.mirostat

    def apply(self, logits: torch.Tensor, s, seqs: list) -> torch.Tensor:
        return _cut_below(logits, torch.tensor(s.epsilon_cutoff, dtype=logits.dtype, device=logits.device))


class EtaCutoff:
    """Eta-sampling (Hewitt et al. 2022): epsilon-sampling with the cutoff eta = min(eps, sqrt(eps) * exp(-H)),
    lowered where the row's entropy H is high, the model unsure (transformers' EtaLogitsWarper)."""

    name = "eta_cutoff"
    before_temperature = False

    def wants(self, s) -> bool:
        return s.temperature > 0 and s.eta_cutoff > 0 and not s.mirostat

    def apply(self, logits: torch.Tensor, s, seqs: list) -> torch.Tensor:
        eps = torch.tensor(s.eta_cutoff, dtype=logits.dtype, device=logits.device)  # float32, as transformers'
        log_p = logits - per_row(logits, lambda r: r.logsumexp(0))  # (B, V)
        # 0 * -inf would be NaN for a filtered token: its log-probability counts as the most negative float
        entropy = -per_row(log_p.clamp(min=torch.finfo(log_p.dtype).min) * logits.softmax(-1), torch.sum)
        return _cut_below(logits, torch.minimum(eps, eps.sqrt() * torch.exp(-entropy)))  # (B, 1)


def per_row(x: torch.Tensor, reduce) -> torch.Tensor:
    """(B, V) -> (B, 1): reduce(row) of each row by itself. PyTorch splits a lone row's sum across threads but
    not a batch's, so their last bits differ, and a row's cutoff must not depend on what shares its batch."""
    return torch.stack([reduce(r) for r in x]).unsqueeze(-1)


def _cut_below(logits: torch.Tensor, cutoff: torch.Tensor) -> torch.Tensor:
    """Drop the tokens less likely than cutoff (a scalar, or (B, 1)), keeping the likeliest of each row."""
    below = logits.softmax(-1) < cutoff  # (B, V)
    return logits.masked_fill(below & (logits < logits.amax(-1, keepdim=True)), NEG_INF)


class TopNSigma:
    """Top-n-sigma (Tang et al. 2024): keep the logits within top_n_sigma standard deviations of the largest,
    the mean and deviation taken over the row's finite logits (llama.cpp's llama_sampler_top_n_sigma_apply).
    Dividing by a temperature scales the gap and the deviation alike, so the kept set is the same before or
    after it."""

    name = "top_n_sigma"
    before_temperature = True

    def wants(self, s) -> bool:
        return s.temperature > 0 and s.top_n_sigma > 0 and not s.mirostat

    def apply(self, logits: torch.Tensor, s, seqs: list) -> torch.Tensor:
        finite = torch.isfinite(logits)  # (B, V); tokens an earlier stage filtered are left out of the statistics
        x = torch.where(finite, logits, 0).double()  # float64: a sum over 50257 logits
        n = finite.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
        mean = per_row(x, torch.sum) / n
        std = per_row(torch.where(finite, x - mean, 0) ** 2, torch.sum).div(n).sqrt()  # population deviation
        floor = logits.amax(-1, keepdim=True).double() - s.top_n_sigma * std  # (B, 1)
        return logits.masked_fill(logits.double() < floor, NEG_INF)
