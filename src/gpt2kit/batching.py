"""The KV cache of the running rows, and the prompt passes that fill it: what the engine's step runs.

The cache is left-padded: one shared write column for every row, each row's own position (`Sequence.pos`),
and `valid` marking the columns a row may attend to. GPT-2's positions are absolute learned embeddings, so
a cached key or value does not depend on the column it sits in: a joining prompt is prefilled alone (in
chunks, within the step's token budget) and its keys and values are copied in right-aligned at the shared
column. A leaving row's slot goes dead until a joining row reuses it or the engine compacts, so a leave costs
no copy; gpt2kit.cpu's C step skips dead slots (PyTorch's path computes a throwaway token in each). The cache never holds more than `budget` positions.
A row's numbers do not depend on its slot or its neighbours: its prefill runs alone and padding is masked out.
"""

from __future__ import annotations

import torch

from .model import GPT, KVCache
from .sequence import Sequence

PREFILL_CHUNK = 128  # the fewest prompt tokens a step gives a waiting prefill, however many rows decode
# Prompt tokens plus decoding rows one engine step runs (vLLM's token budget per step, chunked prefill). A
# prompt's tokens go through GEMMs, many times cheaper per token than a decoding row's, so this keeps
# the time to first token low while bounding how long the decoding rows wait: a 512-token prompt is one step.
STEP_TOKENS = 512
GROW = 256  # columns added on the right when the shared write column reaches the end (each time: one copy)


class Prefill:
    """A prompt run through the model alone, chunk by chunk, for the rows that will continue it, and/or scored."""

    def __init__(self, model: GPT, ids: list[int], rows: list[Sequence], score: int = 0):
        """score: also record every prompt token's log-probability and its `score` most likely alternatives
        (the server's echo with logprobs); the prompt's own tokens are then scored in its prefill's chunks."""
        self.model, self.ids, self.rows, self.score = model, ids, rows, score
        device = model.wte.weight.device
        self.cache = KVCache(model.config, 1, len(ids), device, model.cache_dtype)
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
        chunk = self.ids[start : start + max(1, budget)]
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
        following = torch.tensor(self.ids[start + 1 : start + 1 + n], device=lp.device)  # (n,)
        chosen = lp.gather(1, following[:, None])[:, 0]  # (n,)
        values, indices = torch.topk(lp, self.score, dim=-1)  # (n, score)
        for c, i, v in zip(chosen.tolist(), indices.tolist(), values.tolist()):
            self.scores.append((c, list(zip(i, v))))


def prefill_together(prefills: list[Prefill]) -> None:
    """Whole prompts (none begun, none scored) in one pass, back to back, each then done as if run alone.

    A prompt's prefill is a GEMM whose cost per token falls with its rows: 16 prompts of 32 tokens cost one
    pass of 512 rows, not 16 of 32, and a reduced-precision model widens its weights once, not 16 times.
    Back to back rather than padded to the longest: the matrices run the prompts' own tokens only (prompts
    of 16 and 256 tokens would cost 512 rows padded, 272 packed). Positions are each prompt's own and
    attention stays within each, so a prompt's keys, values and last logits are its solo prefill's up to the
    GEMM's summation order."""
    model, lengths = prefills[0].model, [len(p.ids) for p in prefills]
    device = model.wte.weight.device
    cache = KVCache(model.config, 1, sum(lengths), device, model.cache_dtype)
    idx = torch.tensor([[t for p in prefills for t in p.ids]], dtype=torch.long, device=device)  # (1, sum)
    with torch.inference_mode():
        logits = model(idx, cache=cache, last_only=True, lengths=lengths)  # (1, len(prefills), V)
    start = 0
    for i, p in enumerate(prefills):
        n = lengths[i]
        p.cache.k.copy_(cache.k[:, :, :, start : start + n])  # (L, 1, nh, n, hs)
        p.cache.v.copy_(cache.v[:, :, :, start : start + n])
        p.cache.length, start = n, start + n
        p.logits = logits[0, i]
        for row in p.rows:
            row.pos, row.logits = n, p.logits


class RunningBatch:
    """The rows being decoded, in the slots of one KV cache; `None` slots are dead, waiting for reuse."""

    def __init__(self, model: GPT, pad_id: int, budget: int | None = None):
        """budget: the most positions (rows x columns) the cache may hold; None: unbounded."""
        self.model, self.pad_id, self.budget = model, pad_id, budget
        self.n_ctx, self.n_vocab = model.config.n_ctx, model.config.n_vocab
        self.device, self.dtype = model.wte.weight.device, model.cache_dtype
        self.slots: list[Sequence | None] = []
        self.cache: KVCache | None = None  # a row's positions are its own (Sequence.pos), whatever its column
        self.fed: torch.Tensor | None = None  # (live rows, V) the last feed's logits until a row joins or leaves

    @property
    def rows(self) -> list[Sequence]:
        return [r for r in self.slots if r is not None]

    def logits(self) -> torch.Tensor:
        """(B, V) the live rows' ready logits, in slot order: the last feed's own tensor when nothing changed since."""
        if self.fed is not None:
            return self.fed
        return torch.stack([r.logits for r in self.rows])

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
        if not any(p.rows for p in prefills):
            return  # nothing joins (the engine calls this every step): the last feed's logits stay valid
        rest = []
        self.fed = None
        for p in prefills:
            for row in p.rows:
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
                self.fed = None

    def clear(self) -> None:
        """No rows: the cache's memory goes back."""
        self.slots, self.cache, self.fed = [], None, None

    def compact(self) -> None:
        """Drop dead slots and columns no row needs any more (one copy of the cache)."""
        if any(r is None for r in self.slots) or self._trim() > 0:
            self._rebuild([])

    def _place(self, slot: int, row: Sequence, source: KVCache) -> None:
        """Copy a one-row prefill cache into dead slot `slot`, right-aligned at the shared column."""
        c, P = self.cache, source.length
        c.k[:, slot, :, c.length - P : c.length] = source.k[:, 0, :, :P]
        c.v[:, slot, :, c.length - P : c.length] = source.v[:, 0, :, :P]
        c.valid[slot, : c.length - P] = False
        c.valid[slot, c.length - P :] = True
        c.padded = True
        self.slots[slot] = row

    def _trim(self) -> int:
        """Leading columns invalid for every live row."""
        if self.cache is None or not self.rows:
            return 0 if self.cache is None else self.cache.length
        live = torch.tensor([r is not None for r in self.slots])
        used = self.cache.valid[live.to(self.cache.valid.device), : self.cache.length].any(0)
        return int(used.to(torch.int8).argmax()) if bool(used.any()) else self.cache.length

    def _rebuild(self, joining: list[tuple[Sequence, KVCache]]) -> None:
        """A new cache: live rows and joining rows, right-aligned at a shared column, free columns after."""
        old, keep = self.cache, [i for i, r in enumerate(self.slots) if r is not None]
        span = old.length - self._trim() if keep else 0  # the live rows' columns worth keeping
        W = max([span] + [src.length for _, src in joining] + [1])
        B = len(keep) + len(joining)
        rows = [self.slots[i] for i in keep] + [row for row, _ in joining]
        need = max(r.reservation(self.n_ctx) - r.pos for r in rows)  # columns the rows can still fill
        # Unbounded (one run of known rows): room for them all at once. Bounded (a server): GROW at a time.
        grow = max(1, need if self.budget is None else min(GROW, need, self.budget // B - W))
        new = KVCache(self.model.config, B, W + grow, self.device, self.dtype)
        new.valid[:, :W] = False  # columns from W on are where the rows' next tokens go: valid
        new.length, new.padded = W, True
        for j, i in enumerate(keep):  # live rows: their last `span` columns move, with their validity
            new.k[:, j, :, W - span : W] = old.k[:, i, :, old.length - span : old.length]
            new.v[:, j, :, W - span : W] = old.v[:, i, :, old.length - span : old.length]
            new.valid[j, W - span : W] = old.valid[i, old.length - span : old.length]
        for j, (row, src) in enumerate(joining, start=len(keep)):
            P = src.length
            new.k[:, j, :, W - P : W] = src.k[:, 0, :, :P]
            new.v[:, j, :, W - P : W] = src.v[:, 0, :, :P]
            new.valid[j, W - P : W] = True
        self.cache = new
        self.slots = rows

    def feed(self) -> list[Sequence]:
        """Run every live row's last drawn token through the model. Rows whose context is full leave and
        are returned: their caller re-prefills their last n_ctx/2 tokens (decoding's sliding window)."""
        full = [r for r in self.rows if r.pos >= self.n_ctx]
        for r in full:
            self.leave(r.key)
        if not self.rows:
            return full
        if self.cache.length >= self.cache.max_len:
            self._rebuild([])
        live = [i for i, r in enumerate(self.slots) if r is not None]
        dead = len(live) < len(self.slots)
        logits = self._step_live(live) if dead else None
        if logits is None:
            logits = self._step_every()
            logits = logits[live] if dead else logits
        for r, row_logits in zip(self.rows, logits):
            r.logits, r.pos = row_logits, r.pos + 1
        self.fed = logits  # (live rows, V), in slot order
        return full

    def _step_every(self) -> torch.Tensor:
        """(B, V) one token for every slot, a dead one computing a throwaway token."""
        tokens = torch.tensor([[r.tokens[-1] if r is not None else self.pad_id] for r in self.slots])  # (B, 1)
        positions = torch.tensor([[r.pos if r is not None else 0] for r in self.slots])  # (B, 1)
        with torch.inference_mode():
            return self.model(
                tokens.to(self.device), cache=self.cache, positions=positions.to(self.device), last_only=True
            )[:, -1, :]

    def _step_live(self, live: list[int]) -> torch.Tensor | None:
        """(M, V) one token for the live slots alone, where the model's path can skip the dead ones
        (gpt2kit.cpu's C step); else None."""
        decode_rows = getattr(self.model, "decode_rows", None)
        if decode_rows is None:
            return None
        tokens = torch.tensor([[self.slots[i].tokens[-1]] for i in live])  # (M, 1)
        positions = torch.tensor([[self.slots[i].pos] for i in live])  # (M, 1)
        with torch.inference_mode():
            out = decode_rows(tokens, positions, self.cache, torch.tensor(live))  # moves the write column too
        return None if out is None else out[:, -1, :]
