"""The static-batch token loop gpt2kit ran for the CLI before the one engine (src/gpt2kit/engine.py): kept
as an oracle for tests. A batch of prompts of any lengths, decoded start to end with a KV cache.

Prompts are left-padded so every row's next token sits in the last column; padding is masked
out of attention and positions start at 0 at each row's first real token, so a padded row
computes exactly what it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2kit.model import GPT, KVCache
from gpt2kit.sampling import (
    SamplingSettings,
    apply_logit_bias,
    apply_presence_frequency,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    draw,
    draw_top_k,
)


def process_logits(logits, s, seen, counts):
    """Every filter in the order the other tools apply them: penalties, logit bias, temperature, top-k, top-p."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, s.repetition_penalty)
    if counts is not None:
        logits = apply_presence_frequency(logits, counts, s.presence_penalty, s.frequency_penalty)
    logits = apply_logit_bias(logits, s.logit_bias)
    if s.temperature == 0:
        return logits
    return apply_top_p(apply_top_k(apply_temperature(logits, s.temperature), s.top_k), s.top_p)


@dataclass
class StepResult:
    row: int  # the caller's row id
    token: int
    logprob: float | None = None  # log-probability of `token` under the model's raw distribution
    top: list[tuple[int, float]] | None = None  # the top-N alternatives (token, logprob)


def draw_rows(
    raw: torch.Tensor,
    settings: list[SamplingSettings],
    generators: list[torch.Generator],
    seen: torch.Tensor | None,
    counts: torch.Tensor | None,
) -> torch.Tensor:
    """One token for each row of raw logits (B, V) -> (B,), each row with its own settings and generator.

    Rows that share settings are filtered and drawn together; otherwise the same functions run one row at
    a time. Either way a row's draw depends on its own logits and generator alone.
    """
    first = settings[0]
    if (
        all(s == first for s in settings)
        and first.top_k > 0
        and first.temperature > 0
        and seen is None
        and counts is None
    ):
        return draw_top_k(raw, first, generators)
    if all(s == first for s in settings):
        return draw(process_logits(raw, first, seen, counts), first.temperature, generators)
    return torch.cat(
        [
            draw(
                process_logits(
                    raw[i : i + 1],
                    s,
                    None if seen is None else seen[i : i + 1],
                    None if counts is None else counts[i : i + 1],
                ),
                s.temperature,
                [g],
            )
            for i, (s, g) in enumerate(zip(settings, generators))
        ]
    )


def add_logprobs(results: list[StepResult], raw: torch.Tensor, tokens: torch.Tensor, top_n: int) -> None:
    """Each result's log-probability under the raw distribution (B, V), and the top_n alternatives."""
    lp = raw.float().log_softmax(-1)
    chosen = lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).tolist()
    top = torch.topk(lp, min(top_n, lp.size(-1)), dim=-1)
    for i, res in enumerate(results):
        res.logprob = chosen[i]
        res.top = list(zip(top.indices[i].tolist(), top.values[i].tolist()))


class BatchDecoder:
    def __init__(
        self,
        model: GPT,
        prompts: list[list[int]],
        *,
        settings: SamplingSettings | list[SamplingSettings],
        generators: list[torch.Generator],
        max_new: int | None,
        pad_id: int,
        logprobs: int = 0,
        sliding: bool = True,
    ):
        """settings: one for every row, or one per row (the server batches requests that differ)."""
        rows_settings = settings if isinstance(settings, list) else [settings] * len(prompts)
        self.model, self.row_settings, self.generators = model, list(rows_settings), list(generators)
        self.n_ctx = model.config.n_ctx
        self.max_new, self.pad_id, self.logprobs, self.sliding = max_new, pad_id, logprobs, sliding
        self.device = model.wte.weight.device
        self.rows = list(range(len(prompts)))  # caller's ids of the rows still decoding
        self.tokens = [list(p) for p in prompts]  # every row's real tokens so far
        self.generated = 0
        V = model.config.n_vocab
        B = len(prompts)
        track_seen = any(s.repetition_penalty != 1.0 for s in self.row_settings)
        track_counts = any(s.presence_penalty != 0.0 or s.frequency_penalty != 0.0 for s in self.row_settings)
        self.seen = torch.zeros(B, V, dtype=torch.bool, device=self.device) if track_seen else None
        self.counts = torch.zeros(B, V, dtype=torch.int32, device=self.device) if track_counts else None
        if self.seen is not None:
            for i, p in enumerate(prompts):
                self.seen[i, torch.tensor(p, dtype=torch.long, device=self.device)] = True
        self._logits = self._prefill([list(p) for p in prompts])

    @property
    def active(self) -> bool:
        return bool(self.rows) and (self.max_new is None or self.generated < self.max_new)

    def _prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Run the prompts through the model into a fresh cache; returns each row's last logits (B, V)."""
        T = max(len(p) for p in prompts)
        B = len(prompts)
        room = self.n_ctx if self.max_new is None else min(self.n_ctx, T + self.max_new - self.generated)
        self.cache = KVCache(self.model.config, B, max(room, T), self.device, self.model.wte.weight.dtype)
        idx = torch.full((B, T), self.pad_id, dtype=torch.long)
        positions = torch.zeros(B, T, dtype=torch.long)
        for i, p in enumerate(prompts):
            pad = T - len(p)
            idx[i, pad:] = torch.tensor(p)
            positions[i, pad:] = torch.arange(len(p))
            self.cache.valid[i, :pad] = False
        self.cache.padded = any(len(p) != T for p in prompts)
        self.offsets = torch.tensor([len(p) - T for p in prompts])  # position = cache index + offset
        with torch.inference_mode():
            logits = self.model(
                idx.to(self.device), cache=self.cache, positions=positions.to(self.device), last_only=True
            )
        return logits[:, -1, :]

    def finish(self, row: int) -> None:
        """Stop decoding caller's row `row` (it hit a stop string, or its client left)."""
        if row not in self.rows:
            return
        keep = [i for i, r in enumerate(self.rows) if r != row]
        self.rows = [self.rows[i] for i in keep]
        self.tokens = [self.tokens[i] for i in keep]
        self.generators = [self.generators[i] for i in keep]
        self.row_settings = [self.row_settings[i] for i in keep]
        if not self.rows:
            return
        sel = torch.tensor(keep, device=self.device)
        self.cache.select(sel)
        self.offsets = self.offsets[keep]
        self._logits = self._logits[sel]
        if self.seen is not None:
            self.seen = self.seen[sel]
        if self.counts is not None:
            self.counts = self.counts[sel]

    def step(self) -> list[StepResult]:
        """Draw one token for every active row and feed it back in."""
        raw = self._logits
        next_tokens = draw_rows(raw, self.row_settings, self.generators, self.seen, self.counts)  # (B,)
        results = [StepResult(r, int(t)) for r, t in zip(self.rows, next_tokens.tolist())]
        if self.logprobs:
            add_logprobs(results, raw, next_tokens, self.logprobs)
        for i, t in enumerate(next_tokens.tolist()):
            self.tokens[i].append(t)
        if self.seen is not None:
            self.seen.scatter_(1, next_tokens.unsqueeze(-1), True)
        if self.counts is not None:
            self.counts.scatter_add_(
                1, next_tokens.unsqueeze(-1), torch.ones_like(next_tokens, dtype=torch.int32).unsqueeze(-1)
            )
        self.generated += 1
        if not self.sliding and self.cache.length + 1 >= self.n_ctx:
            self.rows = []  # the context is full: without --length there is no sliding window
        elif self.active:
            self._advance(next_tokens)
        return results

    def _advance(self, next_tokens: torch.Tensor) -> None:
        if self.cache.length >= self.cache.max_len:
            # Beyond n_ctx: keep the last half of the context and re-encode it (a sliding window
            # recomputed every n_ctx/2 tokens rather than every token).
            keep = self.n_ctx // 2
            self._logits = self._prefill([t[-keep:] for t in self.tokens])
            return
        positions = (self.cache.length + self.offsets).clamp(min=0).unsqueeze(-1).to(self.device)  # (B, 1)
        with torch.inference_mode():
            self._logits = self.model(
                next_tokens.unsqueeze(-1).to(self.device), cache=self.cache, positions=positions, last_only=True
            )[:, -1, :]
