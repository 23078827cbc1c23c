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


def contrastive_pick(
    probs: torch.Tensor,
    candidate_hidden: torch.Tensor,
    context_hidden: torch.Tensor,
    alpha: float,
    context_mask: torch.Tensor | None = None,
) -> torch.Tensor:
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


def contrastive_token(model, cache, slot: int, seq, logits: torch.Tensor, process) -> int:
    """Contrastive search's next token for the row in `slot` of a running batch's `cache`.

    logits (V,): the row's raw logits; process(logits (1, V)) -> the logits its penalties, bias and constraint
    leave. The k candidates run through the model as k rows of a copy of the row's keys and values (only
    this row pays for them); the row's own last hidden states are kept in seq.state["contrastive"], the
    prompt's computed once. The chosen candidate's hidden state joins them.
    """
    s = seq.settings
    if "contrastive" not in seq.state:
        with torch.inference_mode():
            seq.state["contrastive"] = model(torch.tensor([seq.tokens], device=logits.device), hidden_only=True)[0]
    context = seq.state["contrastive"]  # (T, C)
    probs = process(logits[None]).softmax(-1)  # (1, V)
    top_p, top_ids = probs.topk(s.top_k)  # (1, K)
    hidden = _candidates_hidden(model, cache, slot, seq.pos, top_ids[0])  # (K, C)
    pick = int(contrastive_pick(top_p, hidden[None], context[None], s.penalty_alpha)[0])
    n_ctx = model.config.n_ctx
    seq.state["contrastive"] = torch.cat([context, hidden[pick : pick + 1]])[-n_ctx:]
    return int(top_ids[0, pick])


def _candidates_hidden(model, cache, slot: int, pos: int, ids: torch.Tensor) -> torch.Tensor:
    """The last hidden state (K, C) of each candidate id appended to the row in `slot` at position `pos`."""
    from ..model import KVCache

    K = ids.numel()
    valid = cache.valid[slot, : cache.length]  # (S,) the row's own columns
    P = int(valid.sum())
    tmp = KVCache(model.config, K, P + 1, cache.k.device, cache.k.dtype)
    tmp.k[:, :, :, :P] = cache.k[:, slot, :, : cache.length][:, :, valid].unsqueeze(1)  # (L, K, nh, P, hs)
    tmp.v[:, :, :, :P] = cache.v[:, slot, :, : cache.length][:, :, valid].unsqueeze(1)
    tmp.length = P
    positions = torch.full((K, 1), pos, dtype=torch.long, device=ids.device)
    with torch.inference_mode():
        return model(ids[:, None], cache=tmp, positions=positions, hidden_only=True)[:, 0]  # (K, C)
