"""Contrastive search's choice (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

Among the k likeliest tokens v, pick

    argmax_v  (1 - alpha) * p(v | x_<t)  -  alpha * max_j cos(h_v, h_j)

where h_v is the model's last hidden state (after ln_f) with v appended, and h_j those of the row's tokens so
far, prompt included: a likely token that would not make the text look like itself again. Not a logits stage:
the engine runs the k candidates through the model to get h_v; this module only scores them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_pick(probs: torch.Tensor, candidate_hidden: torch.Tensor, context_hidden: torch.Tensor,
                     alpha: float, context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The chosen candidate of each row (B,), an index into its k candidates.

    probs (B, K): the candidates' probabilities under the whole vocabulary (not renormalised over the k);
    candidate_hidden (B, K, C): each candidate's last hidden state; context_hidden (B, T, C): the row's tokens'
    last hidden states; context_mask (B, T): False where a row is padded to T.
    """
    candidates = F.normalize(candidate_hidden.float(), dim=-1)
    context = F.normalize(context_hidden.float(), dim=-1)
    cosine = candidates @ context.transpose(1, 2)  # (B, K, T)
    if context_mask is not None:
        cosine = cosine.masked_fill(~context_mask.unsqueeze(1), float("-inf"))
    degeneration = cosine.amax(-1)  # (B, K): each candidate's likeness to the text so far
    score = (1.0 - alpha) * probs.float() - alpha * degeneration  # (B, K)
    return score.argmax(-1)  # of equal scores, the likelier candidate when they come sorted by probability
