"""The logits pipeline: every stage in order, and one token drawn for each row of a step.

Order (as llama.cpp and transformers apply them): penalties, logit bias, temperature, top-k, top-p.
A stage is on for a row when its settings want it; rows that share settings are filtered and drawn
together, and a row's draw depends on its own logits, state and generator alone, so a seed's text never
depends on what shares its batch. Adding a sampler is one entry in PIPELINE.
"""
from __future__ import annotations

import torch

from .options import SamplingSettings
from .sampling import (TOP_K_SHORTCUT, LogitBias, NonFiniteLogits, Penalties, Stage, Temperature, TopK, TopP, draw,
                       draw_top_k)
from .sequence import Sequence, StepResult

PIPELINE: list[Stage] = [Penalties(), LogitBias(), Temperature(), TopK(), TopP()]


def stages_for(s: SamplingSettings) -> list[Stage]:
    return [stage for stage in PIPELINE if stage.wants(s)]


def process_logits(logits: torch.Tensor, s: SamplingSettings, seqs: list[Sequence]) -> torch.Tensor:
    """Raw logits (B, V) of rows sharing settings `s` -> the logits they draw from (float32)."""
    logits = logits.float()
    for stage in stages_for(s):
        logits = stage.apply(logits, s, seqs)
    return logits


def draw_group(raw: torch.Tensor, s: SamplingSettings, seqs: list[Sequence]) -> torch.Tensor:
    """One token for each row (B,) of rows sharing settings `s`; state is not advanced (see accept)."""
    generators = [seq.generator for seq in seqs]
    active = {stage.name for stage in stages_for(s)}
    if s.top_k > 0 and s.temperature > 0 and active <= TOP_K_SHORTCUT:
        return draw_top_k(raw, s, generators)
    return draw(process_logits(raw, s, seqs), s.temperature, generators)


def accept(seq: Sequence, token: int) -> None:
    """Row `seq` drew `token`: every stateful stage it uses updates its state."""
    for stage in stages_for(seq.settings):
        if hasattr(stage, "accept"):
            stage.accept(seq.settings, seq, token)


def draw_rows(seqs: list[Sequence], raw: torch.Tensor) -> tuple[list[StepResult], list[tuple[Sequence, NonFiniteLogits]]]:
    """One token for every row of raw logits (B, V) -> (a StepResult per row that drew, in row order; the rows
    whose logits no token can be drawn from, with why). A failing group is drawn again row by row, so only
    the broken row fails: a draw checks its logits before it uses the row's generator."""
    groups: dict[SamplingSettings, list[int]] = {}
    for i, seq in enumerate(seqs):
        groups.setdefault(seq.settings, []).append(i)
    tokens: dict[int, int] = {}
    failed = []
    for s, rows in groups.items():
        try:
            group = raw if len(rows) == len(seqs) else raw[rows]  # (b, V); one group: no copy
            tokens.update(zip(rows, draw_group(group, s, [seqs[i] for i in rows]).tolist()))
        except NonFiniteLogits:
            for i in rows:
                try:
                    tokens[i] = int(draw_group(raw[i:i + 1], s, [seqs[i]])[0])
                except NonFiniteLogits as e:
                    failed.append((seqs[i], e))
    drawn = sorted(tokens)
    results = [StepResult(seqs[i].key, tokens[i]) for i in drawn]
    top_n = max((seqs[i].logprobs for i in drawn), default=0)
    if top_n:
        add_logprobs(results, raw if len(drawn) == len(seqs) else raw[drawn], top_n)
    for i, res in zip(drawn, results):
        accept(seqs[i], res.token)
    return results, failed


def add_logprobs(results: list[StepResult], raw: torch.Tensor, top_n: int) -> None:
    """Each result's log-probability under the raw distribution (B, V), and the top_n alternatives."""
    lp = raw.float().log_softmax(-1)  # (B, V)
    chosen = torch.tensor([r.token for r in results], device=lp.device)
    picked = lp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).tolist()
    top = torch.topk(lp, min(top_n, lp.size(-1)), dim=-1)
    for i, res in enumerate(results):
        res.logprob = picked[i]
        res.top = list(zip(top.indices[i].tolist(), top.values[i].tolist()))
