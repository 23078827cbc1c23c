"""The one token loop, under the CLI, the Python API, training-time samples and the server's worker.

`add` a Request of Sequences; each `step` admits waiting sequences (scheduler.py: round-robin across
requests, within the row limit and the KV budget), prefills waiting prompts within the step's token
budget (batching.STEP_TOKENS less the decoding rows, at least PREFILL_CHUNK; when nothing decodes, the
oldest prompt whole; whole prompts waiting together that fit the budget, in one pass back to back), draws a token
for every running row through the sampling pipeline, hands the text to each sequence's request, and feeds
the rows that go on. Synchronous: no threads, no I/O.

Rows of one prompt share its prefill. A row whose context fills slides on: its last n_ctx/2 tokens are
prefilled again and it rejoins; a row with no token limit ends instead (the context is its limit).
Prompt scoring (echo with logprobs) rides on the prompt's prefill, chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from .batching import PREFILL_CHUNK, STEP_TOKENS, Prefill, RunningBatch, prefill_together
from .cpu import topk
from .model import GPT
from .pipeline import Pipeline, add_logprobs
from .samplers.contrastive import contrastive_token
from .sampling import NonFiniteLogits, check_finite
from .scheduler import Group, KvBudget, Scheduler, make_groups
from .sequence import DONE, Request, Sequence, Status, StepResult
from .stats import Stats
from .tokenizer import Tokenizer


@dataclass
class _Prompt:
    """A prefill waiting or under way, for the rows that continue it and/or scoring its prompt."""

    prefill: Prefill
    request: Request
    ends: list[Sequence] = field(default_factory=list)  # max_new 0 rows that end when the prompt is scored


class Engine:
    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        *,
        max_rows: int = 1 << 30,
        budget: int | None = None,
        step_tokens: int = STEP_TOKENS,
        stats: Stats | None = None,
    ):
        """max_rows: rows decoded together; budget: KV-cache positions the running rows may reserve together
        (None: max_rows x n_ctx, or unbounded); step_tokens: prompt tokens plus decoding rows per step."""
        self.model, self.tokenizer = model, tokenizer
        self.pipeline = Pipeline(tokenizer, topk.for_model(model))
        self.n_ctx = model.config.n_ctx
        self.max_rows, self.step_tokens = max_rows, step_tokens
        self.budget = budget if budget is not None else (max_rows * self.n_ctx if max_rows < 1 << 30 else None)
        self.stats = stats if stats is not None else Stats()
        self.stats.kv_budget_positions = self.budget or 0
        self.scheduler = Scheduler()
        self.prefills: deque[_Prompt] = deque()
        self.live: dict[int, tuple[Sequence, Request]] = {}  # admitted and not finished, by key
        self.batch = RunningBatch(model, tokenizer.eot_id, budget=self.budget)

    # --- what callers ask ---------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.live and not len(self.scheduler)

    def add(self, request: Request) -> None:
        """Queue a request's sequences; scheduler.TooLarge if one of them could never fit the budget, a
        UserError if their settings ask what cannot be done (a constraint that does not compile)."""
        for s in {seq.settings for seq in request.seqs}:
            self.pipeline.check(s)
        budget = self.budget if self.budget is not None else 1 << 62
        groups = make_groups(request, n_ctx=self.n_ctx, max_rows=self.max_rows, budget=budget)
        self.scheduler.add(request, groups)
        if not groups:
            request.put(DONE)

    def step(self) -> None:
        """One iteration: admit, prefill within the token budget, draw and feed."""
        with torch.inference_mode():
            self._sweep_cancelled()
            was_idle = not self.live
            self._admit()
            if was_idle and self.live:
                self.stats.batches_run += 1
            self._prefill()
            self._decode()
            self._tidy()

    def fail(self, request: Request, error: Exception) -> None:
        """End one request with `error`: its rows leave the batch and its prefills, its waiting rows never start."""
        for key in [k for k, (_, r) in self.live.items() if r is request]:
            self._drop(key)
            del self.live[key]
        self.scheduler.remove(lambda r: r is not request)
        self._close(request, error)

    def fail_all(self, error: Exception) -> None:
        """End every request, admitted or waiting, with `error`."""
        failed = {id(r): r for _, r in self.live.values()} | {id(r): r for r in self.scheduler.requests()}
        self.scheduler.remove(lambda r: False)
        self.live.clear()
        self.prefills.clear()
        self.batch.clear()
        for request in failed.values():
            self._close(request, error)

    # --- the step's parts ---------------------------------------------------------------------------

    def _admit(self) -> None:
        room = KvBudget(
            positions=self.budget if self.budget is not None else 1 << 62,
            max_rows=self.max_rows,
            running=[seq.reservation(self.n_ctx) for seq, _ in self.live.values()],
        )
        for group in self.scheduler.admit(room.take):
            group.request.started = True
            self._start(group)

    def _start(self, group: Group) -> None:
        """A group's rows go live: one prefill of their prompt, scoring it if it is the first of its request's
        groups of that prompt to ask. A max_new 0 row ends at once, or when the prompt is scored."""
        request, ids = group.request, list(group.seqs[0].ids)
        score = request.score if request.score and tuple(ids) not in request.prompt_scores else 0
        if score:
            request.prompt_scores[tuple(ids)] = []  # claimed; filled when the prefill ends
        prompt = _Prompt(Prefill(self.model, ids, [], score=score), request)
        for seq in group.seqs:
            seq.open_text(self.tokenizer.stream_decoder())
            if seq.max_new == 0 and not score:
                seq.finish("length")
                self._finished(seq, request)
                continue
            seq.status = Status.PREFILLING
            (prompt.ends if seq.max_new == 0 else prompt.prefill.rows).append(seq)
            self.live[seq.key] = (seq, request)
        if prompt.prefill.rows or prompt.ends:
            self._enqueue(prompt)
            self.stats.prompt_tokens += len(ids)

    def _enqueue(self, prompt: _Prompt) -> None:
        """Prefills take turns across requests: a request's k-th waiting prompt goes after every other request's
        k-th, so a one-prompt request admitted after a 64-prompt one waits for one of its prompts, not all 64.
        The head (maybe half done) keeps its place."""
        mine = sum(p.request is prompt.request for p in self.prefills)
        turns: dict[int, int] = {}  # request -> its prompts seen so far
        for i, p in enumerate(self.prefills):
            turn = turns[id(p.request)] = turns.get(id(p.request), -1) + 1
            if turn > mine:
                self.prefills.insert(i, prompt)
                return
        self.prefills.append(prompt)

    def _prefill(self) -> None:
        """Waiting prompts in turn within the step's token budget; when no row decodes, the oldest prompt alone
        and whole, so its first token comes after one pass over it. A prompt only scored (max_new 0) has no
        first token to hurry: it keeps to the step's budget."""
        decoding = len(self.batch.rows)
        budget = max(PREFILL_CHUNK, self.step_tokens - decoding)
        ready = self._prefill_together(budget)
        budget -= sum(len(p.ids) for p in ready)
        if ready and not decoding:
            budget = 0  # first tokens come after this one pass
        elif not decoding and self.prefills and self.prefills[0].prefill.rows:
            budget = max(1, self.prefills[0].prefill.remaining)
        while self.prefills and budget > 0:
            p = self.prefills[0].prefill
            budget -= p.advance(budget)
            self.stats.prefill_chunks += 1
            if p.done:
                self._scored(self.prefills.popleft())
                ready.append(p)
        for p in ready:
            for seq in p.rows:
                seq.status = Status.RUNNING
        self.batch.join([p for p in ready if p.rows])

    def _prefill_together(self, budget: int) -> list[Prefill]:
        """The waiting prompts at the head of the line that are whole, unscored and fit `budget` together, in
        one pass, back to back, when there are two or more (batching.prefill_together); the finished prefills."""
        run, tokens = [], 0
        for q in self.prefills:
            p = q.prefill
            if p.cache.length or p.score or not p.rows or tokens + len(p.ids) > budget:
                break
            run.append(q)
            tokens += len(p.ids)
        if len(run) < 2:
            return []
        prefill_together([q.prefill for q in run])
        for q in run:
            self.prefills.popleft()
            self.stats.prefill_chunks += 1
            self._scored(q)
        return [q.prefill for q in run]

    def _scored(self, prompt: _Prompt) -> None:
        """A finished prefill's scores go to its request; its max_new 0 rows end."""
        p = prompt.prefill
        if p.score:
            prompt.request.prompt_scores[tuple(p.ids)] = p.scores
        for seq in prompt.ends:
            seq.finish("length")
            self._end(seq.key)

    def _decode(self) -> None:
        """Draw a token for every running row, hand out what it makes, and feed the rows that go on."""
        rows = self.batch.rows
        if not rows:
            return
        results, failed = self._draw(rows, self.batch.logits())
        for seq, error in failed:  # its own numbers broke down: its request fails, the batch goes on
            if seq.key in self.live:
                self.fail(self.live[seq.key][1], error)
        results = [res for res in results if res.row in self.live]  # not the failed requests' other rows
        if not results:
            return
        now = time.monotonic()
        self.stats.steps_run += 1
        self.stats.batch_size = len(results)
        self.stats.tokens_generated += len(results)
        for res in results:
            seq, request = self.live[res.row]
            self._first_token(seq, request, now)
            done = seq.take(res, self.tokenizer.eot_id, ends=self.pipeline.ends(seq))
            if not done and seq.max_new is None and seq.pos + 1 >= self.n_ctx:
                seq.finish("length")  # no token limit: the context is the limit (no sliding window)
                done = True
            if done and seq.finish_reason == "stop" and self.pipeline.incomplete(seq):
                seq.finish_reason = seq.sample.finish_reason = "length"  # a stop string cut a document short
            for piece in seq.pop_pieces():
                request.put(piece)
            if done:
                self._end(res.row, now)
        for seq in self.batch.feed():  # rows whose context is full: re-prefill their last n_ctx/2 tokens first
            seq.status = Status.PREFILLING
            window = Prefill(self.model, seq.tokens[-(self.n_ctx // 2) :], [seq])
            self.prefills.appendleft(_Prompt(window, self.live[seq.key][1]))

    def _draw(self, rows: list[Sequence], raw: torch.Tensor) -> tuple[list[StepResult], list]:
        """The pipeline's draw for every row; contrastive search's rows (penalty_alpha) apart, each running
        its k candidates through the model, so the other rows keep the batch's one step."""
        searching = [i for i, seq in enumerate(rows) if seq.settings.penalty_alpha > 0]
        if not searching:
            return self.pipeline.draw_rows(rows, raw)
        others = [i for i in range(len(rows)) if i not in searching]
        results, failed = self.pipeline.draw_rows([rows[i] for i in others], raw[others])
        for i in searching:
            seq = rows[i]
            greedy = dataclasses.replace(seq.settings, temperature=0.0)  # penalties, bias, constraint: no truncation
            try:
                check_finite(raw[i : i + 1])
                token = contrastive_token(
                    self.model,
                    self.batch.cache,
                    self.batch.slots.index(seq),
                    seq,
                    raw[i],
                    lambda x: self.pipeline.process(x, greedy, [seq]),
                )
            except NonFiniteLogits as e:
                failed.append((seq, e))
                continue
            res = StepResult(seq.key, token)
            if seq.logprobs:
                add_logprobs([res], raw[i : i + 1], seq.logprobs)
            self.pipeline.accept(seq, token)
            results.append(res)
        return results, failed

    def _first_token(self, seq: Sequence, request: Request, now: float) -> None:
        if seq.first_token is None:
            seq.first_token = now
        if request.first_token is None:
            request.first_token = now
            self.stats.time_to_first_token.observe(now - request.submitted)

    def _tidy(self) -> None:
        """Give the cache's memory back when nothing runs; compact when half the slots are dead and none waits."""
        batch = self.batch
        dead = sum(r is None for r in batch.slots)
        if not batch.rows:
            batch.clear()
        elif dead * 2 >= len(batch.slots) and not self.prefills and not len(self.scheduler):
            batch.compact()
        self.stats.kv_cache_positions = batch.positions

    # --- rows ending --------------------------------------------------------------------------------

    def _sweep_cancelled(self) -> None:
        """Rows whose caller left stop now; waiting rows of such requests never start."""
        now = time.monotonic()
        for key, (seq, _) in list(self.live.items()):
            if seq.cancelled:
                self._drop(key)
                seq.finish("cancelled")
                self.stats.cancelled_rows += 1
                self._end(key, now)
        for group in self.scheduler.remove(lambda r: not r.cancelled):
            for seq in group.seqs:
                seq.finish("cancelled")
                self.stats.cancelled_rows += 1
                self._finished(seq, group.request)

    def _drop(self, key: int) -> None:
        """Take row `key` out of the batch or its prefill (a prefill nobody waits for is dropped)."""
        self.batch.leave(key)
        for p in list(self.prefills):
            p.prefill.rows = [s for s in p.prefill.rows if s.key != key]
            p.ends = [s for s in p.ends if s.key != key]
            if not p.prefill.rows and not p.ends:
                self.prefills.remove(p)

    def _end(self, key: int, now: float | None = None) -> None:
        seq, request = self.live.pop(key)
        self.batch.leave(key)
        if seq.first_token is not None and len(seq.generated) > 1:
            elapsed = (now or time.monotonic()) - seq.first_token
            self.stats.token_latency.observe(elapsed / (len(seq.generated) - 1))
        self._finished(seq, request)

    def _finished(self, seq: Sequence, request: Request) -> None:
        """A row's last pieces and its Sample; the request's end once it has no open rows."""
        for piece in seq.pop_pieces():
            request.put(piece)
        request.put(seq.sample)
        request.open -= 1
        if request.open == 0:
            request.put(DONE)
            self.stats.requests_done += 1

    def _close(self, request: Request, error: Exception) -> None:
        request.failed = True
        request.put(error)
        request.put(DONE)
        self.stats.requests_done += 1
        self.stats.requests_failed += 1
