"""Mirostat v2 (Basu et al. 2021, "Mirostat: a neural text decoding algorithm that directly controls perplexity").

Each row keeps mu, a ceiling on surprise in bits, starting at 2 * tau. A step keeps the tokens whose surprise
-log2 p is at most mu (at least the likeliest), the draw picks among them, and mu moves by eta times the
drawn token's surprise under the truncated distribution minus tau. This follows llama.cpp's
llama_sampler_mirostat_v2_apply, split in two: `apply` truncates and notes what `accept` needs to update mu
once the engine has drawn (llama.cpp draws inside the sampler, with its own RNG; here the engine's draw
uses the row's generator, so a seed's text never depends on its batch).
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


class MirostatV2:
    name = "mirostat"
    # Last, after temperature: llama.cpp's chain for mirostat 2 is temperature then mirostat_v2, in place of
    # top-k, top-p and the others (which turn themselves off when mirostat is on; see truncation.py, xtc.py).
    before_temperature = False

    def wants(self, s) -> bool:
        return s.temperature > 0 and s.mirostat == 2

    def start(self, s, seq) -> None:
        seq.state[self.name] = {"mu": 2.0 * s.mirostat_tau}  # llama_sampler_init_mirostat_v2's start

    def apply(self, logits: torch.Tensor, s, seqs: list) -> torch.Tensor:
        kept = torch.empty_like(logits)
        for i, seq in enumerate(seqs):
            # Row by row: a lone row's logsumexp is split across threads, a batch's is not, and mu must not
            # depend on what shares the batch (its last bit would, and with it, some day, a token).
            st = seq.state.setdefault(self.name, {"mu": 2.0 * s.mirostat_tau})
            surprise = (logits[i].logsumexp(0) - logits[i]) / LN2  # (V,) bits
            drop = surprise > st["mu"]
            # When even the likeliest token is more surprising than mu, it alone stays (llama.cpp keeps the
            # first of its sorted candidates); otherwise it stays anyway, surprise growing as probability falls.
            drop[logits[i].argmax()] = False
            kept[i] = logits[i].masked_fill(drop, float("-inf"))
            st["kept"] = kept[i].clone()  # what the draw saw, whatever a later hand does to the batch
        return kept

    def accept(self, s, seq, token: int) -> None:
        st = seq.state.get(self.name)
        if st is None or "kept" not in st:  # a greedy row: no truncation ran, mu stays
            return
        kept = st.pop("kept")
        observed = (float(kept.logsumexp(0)) - float(kept[token])) / LN2  # bits, under the truncated distribution
        st["mu"] -= s.mirostat_eta * (observed - s.mirostat_tau)
