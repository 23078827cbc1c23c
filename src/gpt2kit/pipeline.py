"""The logits pipeline: every stage in order, and one token drawn for each row of a step.

    penalties, DRY                   on the raw logits (llama.cpp's chain starts with them)
    logit bias, constraint           OpenAI's bias, then the grammar's mask (gpt2kit.constraints)
    top-n-sigma                      on the whole row, before temperature (llama.cpp: right after DRY)
    temperature, top-k, top-p        GPT-2's own
    min-p, typical, epsilon, eta     after top-p, in transformers' order, whose warpers they match
    XTC                              after min-p, as in llama.cpp
    watermark                        after the warpers, as transformers applies it
    mirostat v2                      last: it truncates what the draw sees (the truncations above are off)

A stage is on for a row when its settings want it; rows that share settings are filtered and drawn together,
and a row's draw depends on its own logits, state and generator alone, so a seed's text never depends on
what shares its batch. A stage keeps per-row state in Sequence.state and changes it only in `accept`.
Adding a sampler is one entry in Pipeline.stages (samplers/order.py says why each goes where it goes).
"""

from __future__ import annotations

from typing import Callable

import torch

from .constraints.stage import ConstraintStage
from .options import SamplingSettings
from .provenance.watermark import Watermark
from .samplers.dry import Dry
from .samplers.mirostat import MirostatV2
from .samplers.truncation import EpsilonCutoff, EtaCutoff, MinP, TopNSigma, TypicalP
from .samplers.xtc import Xtc
from .sampling import (
    TOP_K_SHORTCUT,
    LogitBias,
    NonFiniteLogits,
    Penalties,
    Stage,
    Temperature,
    TopK,
    TopP,
    draw,
    draw_top_k,
)
from .sequence import Sequence, StepResult
from .tokenizer import Tokenizer

RANDOM_STAGES = frozenset({"xtc"})  # stages that draw from the row's generator in apply()


class Pipeline:
    """The stages for one tokenizer (DRY's breakers and the constraints are read in its tokens)."""

    def __init__(self, tokenizer: Tokenizer | None = None, topk: Callable | None = None):
        """topk: the model's top-k for the top-k shortcut (cpu/topk.py); torch.topk where None."""
        vocab = tokenizer.n_vocab if tokenizer is not None else None
        self.topk = topk
        self.constraint = ConstraintStage(tokenizer)
        self.stages: list[Stage] = [
            Penalties(),
            Dry(tokenizer),
            LogitBias(),
            self.constraint,
            TopNSigma(),
            Temperature(),
            TopK(),
            TopP(),
            MinP(),
            TypicalP(),
            EpsilonCutoff(),
            EtaCutoff(),
            Xtc(),
            Watermark(vocab) if vocab else Watermark(),
            MirostatV2(),
        ]
        self._for: dict[SamplingSettings, list[Stage]] = {}

    def stages_for(self, s: SamplingSettings) -> list[Stage]:
        if s not in self._for:
            self._for[s] = [stage for stage in self.stages if stage.wants(s)]
        return self._for[s]

    def check(self, s: SamplingSettings) -> None:
        """What can be refused before any work (a constraint that does not compile): a UserError."""
        if self.constraint.wants(s):
            self.constraint.check(s)

    def process(self, logits: torch.Tensor, s: SamplingSettings, seqs: list[Sequence]) -> torch.Tensor:
        """Raw logits (B, V) of rows sharing settings `s` -> the logits they draw from (float32)."""
        logits = logits.float()
        for stage in self.stages_for(s):
            logits = stage.apply(logits, s, seqs)
        return logits

    def draw_group(self, raw: torch.Tensor, s: SamplingSettings, seqs: list[Sequence]) -> torch.Tensor:
        """One token for each row (B,) of rows sharing settings `s`; state is not advanced (see accept)."""
        generators = [seq.generator for seq in seqs]
        if s.top_k > 0 and s.temperature > 0 and {st.name for st in self.stages_for(s)} <= TOP_K_SHORTCUT:
            return draw_top_k(raw, s, generators, self.topk)
        return draw(self.process(raw, s, seqs), s.temperature, generators)

    def accept(self, seq: Sequence, token: int) -> None:
        """Row `seq` drew `token`: every stateful stage it uses updates its state."""
        for stage in self.stages_for(seq.settings):
            if hasattr(stage, "accept"):
                stage.accept(seq.settings, seq, token)

    def ends(self, seq: Sequence) -> bool:
        """A stage says the row is complete (its constraint's document is whole and nothing may follow)."""
        return self.constraint.wants(seq.settings) and self.constraint.finished(seq)

    def incomplete(self, seq: Sequence) -> bool:
        """A constrained row whose text is not (yet) a whole document."""
        return self.constraint.wants(seq.settings) and not self.constraint.complete(seq)

    def draw_rows(
        self, seqs: list[Sequence], raw: torch.Tensor
    ) -> tuple[list[StepResult], list[tuple[Sequence, NonFiniteLogits]]]:
        """One token for every row of raw logits (B, V) -> (a StepResult per row that drew, in row order; the
        rows whose logits no token can be drawn from, with why). A failing group is drawn again row by row
        (its rows' generators put back first), so only the broken row fails."""
        groups: dict[SamplingSettings, list[int]] = {}
        for i, seq in enumerate(seqs):
            groups.setdefault(seq.settings, []).append(i)
        tokens: dict[int, int] = {}
        failed = []
        for s, rows in groups.items():
            random = any(st.name in RANDOM_STAGES for st in self.stages_for(s))
            states = [seqs[i].generator.get_state() for i in rows] if random else []
            try:
                group = raw if len(rows) == len(seqs) else raw[rows]  # (b, V); one group: no copy
                tokens.update(zip(rows, self.draw_group(group, s, [seqs[i] for i in rows]).tolist()))
            except NonFiniteLogits:
                for i, state in zip(rows, states or [None] * len(rows)):
                    if state is not None:
                        seqs[i].generator.set_state(state)
                    try:
                        tokens[i] = int(self.draw_group(raw[i : i + 1], s, [seqs[i]])[0])
                    except NonFiniteLogits as e:
                        failed.append((seqs[i], e))
        drawn = sorted(tokens)
        results = [StepResult(seqs[i].key, tokens[i]) for i in drawn]
        top_n = max((seqs[i].logprobs for i in drawn), default=0)
        if top_n:
            add_logprobs(results, raw if len(drawn) == len(seqs) else raw[drawn], top_n)
        for i, res in zip(drawn, results):
            self.accept(seqs[i], res.token)
        return results, failed


def process_logits(logits: torch.Tensor, s: SamplingSettings, seqs: list[Sequence]) -> torch.Tensor:
    """GPT-2's pipeline applied to logits (B, V) of rows sharing `s` (for callers without an engine)."""
    return _DEFAULT.process(logits, s, seqs)


_DEFAULT = Pipeline()


def add_logprobs(results: list[StepResult], raw: torch.Tensor, top_n: int) -> None:
    """Each result's log-probability under the raw distribution (B, V), and the top_n alternatives."""
    lp = raw.float().log_softmax(-1)  # (B, V)
    chosen = torch.tensor([r.token for r in results], device=lp.device)
    picked = lp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).tolist()
    top = torch.topk(lp, min(top_n, lp.size(-1)), dim=-1)
    for i, res in enumerate(results):
        res.logprob = picked[i]
        res.top = list(zip(top.indices[i].tolist(), top.values[i].tolist()))
