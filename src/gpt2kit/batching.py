"""Continuous batching: rows join a running batch between decoding steps and leave when they are done.

The server's engine drives this; the CLI keeps decoding.BatchDecoder (one batch, start to end).

The cache is decoding's left-padded one: one shared write column for every row, each row's own
`offset` from column to position, and `valid` marking the columns a row may attend to. GPT-2's
positions are absolute learned embeddings, so a cached key or value does not depend on the column
it sits in: a joining prompt is prefilled alone (in chunks, so a long one does not stall the
others' steps) and its keys and values are copied in right-aligned at the shared column. `n` samples
of one prompt prefill once and get copies. A prefill can also score its prompt (the server's echo with
logprobs, lm-evaluation-harness's loglikelihood) chunk by chunk: the output head then runs over every
position of a chunk, not just the last, so what a scoring prompt holds at a time is chunk x V logits
(the rows' first-token logits come from that full-width head: equal to the last-position one up to float
rounding). A leaving row's slot is marked dead (it computes a throwaway
token until it is reused by a joining row or compacted away), so a leave costs no copy of the cache.
Why not drop it at once: the C step takes one contiguous (L, B, ...) cache, so dropping a row is a copy
of every other row's keys and values (124M, 15 rows of 700 positions: 0.8 GB), and the next row to join
would copy them all again; a dead slot costs 1/B of a step. Under load a waiting row takes the slot at
the next step, and in a closed loop (a client thinks ~1 s, then sends its next request) the slot is
dead for ~10 steps, less than the two copies; the engine compacts when half the slots are dead and
nothing is waiting to join.

The cache's memory is bounded: a rebuild allocates rows x (their span + up to GROW) columns, never more
than `budget` positions (the server's --max-batch-tokens; its admission keeps rows x the longest
reservation within it), and dead slots are reused by joining rows before the cache grows.

A row's text depends on its prompt, its settings and its generator alone: its prefill runs alone, its
keys are the same wherever they sit, padding is masked out, and it draws from its own generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .decoding import StepResult, add_logprobs, draw_rows
from .model import GPT, KVCache
from .sampling import NonFiniteLogits, SamplingSettings

PREFILL_CHUNK = 128  # the fewest prompt tokens a step gives a waiting prefill, however many rows decode
# Prompt tokens plus decoding rows one engine step runs (vLLM's token budget per step, chunked prefill). A
# prompt's tokens go through GEMMs, many times cheaper per token than a decoding row's, so this keeps
# the time to first token low while bounding how long the decoding rows wait: a 512-token prompt is one step.
STEP_TOKENS = 512
GROW = 256  # columns added on the right when the shared write column reaches the end (each time: one copy)


@dataclass
class Row:
    """One sample being decoded, whichever slot of the batch it is in."""
    key: int  # the caller's id
    settings: SamplingSettings
    generator: torch.Generator
    tokens: list[int]  # the prompt and every token drawn so far
    logprobs: int = 0  # top alternatives to report per step
    pos: int = 0  # positions held in the cache: the next token fed goes at this position
    logits: torch.Tensor | None = None  # (V,) the next token's raw logits, ready to draw
    seen: torch.Tensor | None = None  # (V,) bool: repetition penalty's tokens so far
    counts: torch.Tensor | None = None  # (V,) int32: presence/frequency penalties' counts

    def track(self, device, n_vocab: int) -> None:
        """Start the penalties' bookkeeping this row's settings need (the prompt counts as seen, not counted)."""
        s = self.settings
        if s.repetition_penalty != 1.0 and self.seen is None:
            self.seen = torch.zeros(n_vocab, dtype=torch.bool, device=device)
            self.seen[torch.tensor(self.tokens, dtype=torch.long, device=device)] = True
        if (s.presence_penalty != 0.0 or s.frequency_penalty != 0.0) and self.counts is None:
            self.counts = torch.zeros(n_vocab, dtype=torch.int32, device=device)


class Prefill:
    """A prompt run through the model alone, chunk by chunk, for the rows that will continue it, and/or scored."""

    def __init__(self, model: GPT, ids: list[int], rows: list[Row], score: int = 0):
        """score: also record every prompt token's log-probability and its `score` most likely alternatives
        (the server's echo with logprobs); the prompt's own tokens are then scored in its prefill's chunks."""
        self.model, self.ids, self.rows, self.score = model, ids, rows, score
        device = model.wte.weight.device
        self.cache = KVCache(model.config, 1, len(ids), device, model.wte.weight.dtype)
        self.logits: torch.Tensor | None = None
        # Per prompt token (logprob, [(token, logprob)] top `score`); the first token has none (OpenAI's null).
        self.scores: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])] if score else []

    @property
    def done(self) -> bool:
        return self.logits is not None

    @property
    def remaining(self) -> int:
        return len(self.ids) - self.cache.length

    def advance(self, budget: int) -> int:
        """Run up to `budget` more prompt tokens (at least one); returns how many ran."""
        start = self.cache.length
        chunk = self.ids[start:start + max(1, budget)]
        # Past the first chunk the queries sit after cached keys: the explicit mask (padded) places the
        # causal diagonal right, where SDPA's is_causal would align it to the first key.
        self.cache.padded = start > 0
        x = torch.tensor([chunk], dtype=torch.long, device=self.cache.k.device)  # (1, T)
        with torch.inference_mode():
            # Scoring needs every position's logits (at most chunk x V at a time); a plain prefill only the last.
            logits = self.model(x, cache=self.cache, last_only=not self.score)  # (1, T or 1, V)
        if self.score:
            self._score(logits[0], start)
        if self.cache.length == len(self.ids):
            # A copy when scoring: a view would keep the whole chunk's (T, V) logits alive with the rows.
            self.logits = logits[0, -1].clone() if self.score else logits[0, -1]
            for row in self.rows:
                row.pos, row.logits = len(self.ids), self.logits
        return len(chunk)

    def _score(self, logits: torch.Tensor, start: int) -> None:
        """logits (T, V) of positions start.. : position t scores prompt token t + 1 (the chunk's last
        position scores the next chunk's first token; the prompt's last position scores nothing)."""
        n = min(logits.shape[0], len(self.ids) - 1 - start)  # positions with a next prompt token
        if n <= 0:
            return
        lp = logits[:n].float().log_softmax(-1)  # (n, V)
        following = torch.tensor(self.ids[start + 1:start + 1 + n], device=lp.device)  # (n,)
        chosen = lp.gather(1, following[:, None])[:, 0]  # (n,)
        values, indices = torch.topk(lp, self.score, dim=-1)  # (n, score)
        for c, i, v in zip(chosen.tolist(), indices.tolist(), values.tolist()):
            self.scores.append((c, list(zip(i, v))))


class RunningBatch:
    """The rows being decoded, in the slots of one KV cache; `None` slots are dead, waiting for reuse."""

    def __init__(self, model: GPT, pad_id: int, budget: int | None = None):
        """budget: the most positions (rows x columns) the cache may hold; None: unbounded."""
        self.model, self.pad_id, self.budget = model, pad_id, budget
        self.n_ctx, self.n_vocab = model.config.n_ctx, model.config.n_vocab
        self.device, self.dtype = model.wte.weight.device, model.wte.weight.dtype
        self.slots: list[Row | None] = []
        self.cache: KVCache | None = None  # a row's positions are its own (Row.pos), whatever its column
        self.failed: list[tuple[int, NonFiniteLogits]] = []  # (row key, why) of the last draw's rows that drew nothing

    @property
    def rows(self) -> list[Row]:
        return [r for r in self.slots if r is not None]

    @property
    def width(self) -> int:
        """Columns the cache holds per row now (its memory is slots x width x 2 x n_layer x n_embd)."""
        return 0 if self.cache is None else self.cache.max_len

    @property
    def positions(self) -> int:
        """KV-cache positions allocated now (slots x columns, dead slots included)."""
        return len(self.slots) * self.width

    def join(self, prefills: list[Prefill]) -> None:
        """Put the finished prefills' rows into the batch: into dead slots where the prompt fits, else
        one rebuild of the cache for them all."""
        rest = []
        for p in prefills:
            for row in p.rows:
                row.track(self.device, self.n_vocab)
                free = next((i for i, r in enumerate(self.slots) if r is None), None)
                if free is not None and self.cache is not None and len(p.ids) <= self.cache.length < self.cache.max_len:
                    self._place(free, row, p.cache)
                else:
                    rest.append((row, p.cache))
        if rest:
            self._rebuild(rest)

    def leave(self, key: int) -> None:
        """Row `key` is done: its slot goes dead at once (no copy); compact() or a join reclaims it."""
        for i, r in enumerate(self.slots):
            if r is not None and r.key == key:
                self.slots[i] = None
                self.cache.valid[i] = False

    def compact(self) -> None:
        """Drop dead slots and columns no row needs any more (one copy of the cache)."""
        if any(r is None for r in self.slots) or self._trim() > 0:
            self._rebuild([])

    def _place(self, slot: int, row: Row, source: KVCache) -> None:
        """Copy a one-row prefill cache into dead slot `slot`, right-aligned at the shared column."""
        c, P = self.cache, source.length
        c.k[:, slot, :, c.length - P:c.length] = source.k[:, 0, :, :P]
        c.v[:, slot, :, c.length - P:c.length] = source.v[:, 0, :, :P]
        c.valid[slot, :c.length - P] = False
        c.valid[slot, c.length - P:] = True
        c.padded = True
        self.slots[slot] = row

    def _trim(self) -> int:
        """Leading columns invalid for every live row."""
        if self.cache is None or not self.rows:
            return 0 if self.cache is None else self.cache.length
        live = torch.tensor([r is not None for r in self.slots])
        used = self.cache.valid[live.to(self.cache.valid.device), :self.cache.length].any(0)
        return int(used.to(torch.int8).argmax()) if bool(used.any()) else self.cache.length

    def _rebuild(self, joining: list[tuple[Row, KVCache]]) -> None:
        """A new cache: live rows and joining rows, right-aligned at a shared column, free columns after."""
        old, keep = self.cache, [i for i, r in enumerate(self.slots) if r is not None]
        span = old.length - self._trim() if keep else 0  # the live rows' columns worth keeping
        W = max([span] + [src.length for _, src in joining] + [1])
        B = len(keep) + len(joining)
        grow = GROW if self.budget is None else max(1, min(GROW, self.budget // B - W))  # within the budget
        new = KVCache(self.model.config, B, W + grow, self.device, self.dtype)
        new.valid[:, :W] = False  # columns from W on are where the rows' next tokens go: valid
        new.length, new.padded = W, True
        for j, i in enumerate(keep):  # live rows: their last `span` columns move, with their validity
            new.k[:, j, :, W - span:W] = old.k[:, i, :, old.length - span:old.length]
            new.v[:, j, :, W - span:W] = old.v[:, i, :, old.length - span:old.length]
            new.valid[j, W - span:W] = old.valid[i, old.length - span:old.length]
        for j, (row, src) in enumerate(joining, start=len(keep)):
            P = src.length
            new.k[:, j, :, W - P:W] = src.k[:, 0, :, :P]
            new.v[:, j, :, W - P:W] = src.v[:, 0, :, :P]
            new.valid[j, W - P:W] = True
        self.cache = new
        self.slots = [self.slots[i] for i in keep] + [row for row, _ in joining]

    def draw(self) -> list[StepResult]:
        """One token for every live row from its ready logits; the rows keep them for feed(). A row whose
        logits no token can be drawn from gets none: it is in `failed`, for its caller to end."""
        self.failed = []
        live = self.rows
        if not live:
            return []
        raw = torch.stack([r.logits for r in live])  # (B, V)
        if len({r.settings for r in live}) == 1:  # one kind of row (the usual case): drawn together
            first = live[0]  # rows of the same settings track the same penalties (Row.track)
            seen = torch.stack([r.seen for r in live]) if first.seen is not None else None  # (B, V)
            counts = torch.stack([r.counts for r in live]) if first.counts is not None else None  # (B, V)
            try:
                tokens = draw_rows(raw, [r.settings for r in live], [r.generator for r in live], seen, counts)
            except NonFiniteLogits:  # one row's numbers broke down: it alone must fail, not the batch
                live, raw, tokens = self._draw_apart(live, raw)
        else:  # a row's draw takes the path its own settings pick, whatever shares the batch
            live, raw, tokens = self._draw_apart(live, raw)
        if not live:
            return []
        results = [StepResult(r.key, int(t)) for r, t in zip(live, tokens.tolist())]
        top_n = max(r.logprobs for r in live)
        if top_n:
            add_logprobs(results, raw, tokens, top_n)
        for r, res in zip(live, results):
            r.tokens.append(res.token)
            if r.seen is not None:
                r.seen[res.token] = True
            if r.counts is not None:
                r.counts[res.token] += 1
        return results

    def _draw_apart(self, live: list[Row], raw: torch.Tensor) -> tuple[list[Row], torch.Tensor, torch.Tensor]:
        """Each row drawn alone -> (the rows that drew, their logits (B', V), their tokens (B',)). A draw
        checks its logits before it uses the row's generator, so a row that fails leaves the others' draws
        as they would have been."""
        kept, tokens = [], []
        for i, r in enumerate(live):
            try:
                tokens.append(draw_rows(raw[i:i + 1], [r.settings], [r.generator],
                                        None if r.seen is None else r.seen[None],
                                        None if r.counts is None else r.counts[None]))
                kept.append(i)
            except NonFiniteLogits as e:
                self.failed.append((r.key, e))
        rows = [live[i] for i in kept]
        return rows, raw[kept], torch.cat(tokens) if tokens else torch.empty(0, dtype=torch.long)

    def feed(self) -> list[Row]:
        """Run every live row's last drawn token through the model. Rows whose context is full leave and
        are returned: their caller re-prefills their last n_ctx/2 tokens (decoding's sliding window)."""
        full = [r for r in self.rows if r.pos >= self.n_ctx]
        for r in full:
            self.leave(r.key)
        if not self.rows:
            return full
        if self.cache.length >= self.cache.max_len:
            self._rebuild([])
        tokens = torch.tensor([[r.tokens[-1] if r is not None else self.pad_id] for r in self.slots])  # (B, 1)
        positions = torch.tensor([[r.pos if r is not None else 0] for r in self.slots])  # (B, 1)
        with torch.inference_mode():
            logits = self.model(tokens.to(self.device), cache=self.cache, positions=positions.to(self.device),
                                last_only=True)[:, -1, :]  # (B, V)
        for i, r in enumerate(self.slots):
            if r is not None:
                r.logits, r.pos = logits[i], r.pos + 1
        return full
