"""XTC, "exclude top choices" (p-e-w, text-generation-webui PR 6335), as llama.cpp's llama_sample_xtc_apply.

With chance xtc_probability per row and step, when two or more tokens are at least xtc_threshold likely,
all of them but the least likely are removed: the text leaves its most predictable paths while every
token that stays is still a plausible one. A threshold above 0.5 can never catch two tokens: off.
The chance is drawn from the row's own generator, so a seed's text never depends on its batch.
"""

from __future__ import annotations

import torch


class Xtc:
    name = "xtc"
    # After top-p and min-p (llama.cpp: ..., min_p, xtc, temperature) and, unlike llama.cpp's default chain,
    # after temperature: the threshold is on the probabilities the draw uses, as every other stage here sees them.
    before_temperature = False

    def wants(self, s) -> bool:
        return s.temperature > 0 and s.xtc_probability > 0 and s.xtc_threshold <= 0.5 and not s.mirostat

    def apply(self, logits: torch.Tensor, s, seqs: list) -> torch.Tensor:
        candidates = torch.isfinite(logits).sum(-1).tolist()  # (B,)
        # llama.cpp draws only for rows with two candidates or more, and applies when chance <= probability
        rows = [
            i
            for i, seq in enumerate(seqs)
            if candidates[i] >= 2 and float(torch.rand((), generator=seq.generator)) <= s.xtc_probability
        ]
        if not rows:
            return logits
        picked = torch.tensor(rows, device=logits.device)
        probs = logits[picked].softmax(-1)  # (R, V)
        # (R, V): the top choices, among the tokens still in (at threshold 0, every one of them)
        top = (probs >= s.xtc_threshold) & torch.isfinite(logits[picked])
        # The least likely top choice stays (of several tied there, the one with the lowest id).
        least = torch.where(top, probs, torch.inf).argmin(-1, keepdim=True)  # (R, 1)
        drop = top.scatter(-1, least, False) & (top.sum(-1, keepdim=True) >= 2)
        out = logits.clone()
        out[picked] = logits[picked].masked_fill(drop, float("-inf"))
        return out
