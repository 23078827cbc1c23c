"""Admission: which waiting rows start next, within the batch's rows and KV-cache budget, fairly.

A request's jobs come in groups: the samples of one prompt, prefilled once and admitted together
(split where one group would not fit the batch or the budget). Waiting requests take turns, one group
each (round-robin), so a request of 64 rows cannot hold back a one-row request behind all of its rows.
The turn order is kept when the next group does not fit: it waits for room rather than be overtaken
for ever by smaller ones.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ..generation import Job


class TooLarge(Exception):
    """A request one of whose rows could never fit the server's budget."""


@dataclass
class Group:
    """Jobs of one request continuing the same prompt: one prefill, admitted together."""
    request: Any  # the engine's Request
    jobs: list[Job]
    row_cost: int  # KV positions each row reserves: min(n_ctx, prompt + max_new)

    @property
    def cost(self) -> int:
        return self.row_cost * len(self.jobs)


def row_cost(job: Job, n_ctx: int) -> int:
    """The most cache positions a row can hold: past n_ctx it slides (decoding's window), never grows."""
    return min(n_ctx, len(job.ids) + (n_ctx if job.max_new is None else job.max_new))


def make_groups(request: Any, jobs: list[Job], *, n_ctx: int, max_rows: int, budget: int) -> list[Group]:
    """Consecutive jobs of equal prompts, in groups that fit `max_rows` rows and `budget` positions;
    TooLarge if a single row does not fit the budget."""
    groups: list[Group] = []
    for job in jobs:
        cost = row_cost(job, n_ctx)
        if cost > budget:
            raise TooLarge(f"a row of this request needs {cost} KV-cache positions (prompt + max_tokens); this "
                           f"server's --max-batch-tokens is {budget}: ask for fewer tokens")
        last = groups[-1] if groups else None
        if last is not None and last.jobs[0].ids == job.ids and len(last.jobs) < max_rows \
                and last.cost + cost <= budget:
            last.jobs.append(job)
        else:
            groups.append(Group(request, [job], cost))
    return groups


class Scheduler:
    """Requests waiting for room, each with its groups not yet admitted."""

    def __init__(self) -> None:
        self._turns: deque[tuple[Any, deque[Group]]] = deque()

    def __len__(self) -> int:
        """Requests with rows still waiting."""
        return len(self._turns)

    def add(self, request: Any, groups: list[Group]) -> None:
        if groups:
            self._turns.append((request, deque(groups)))

    def admit(self, free_rows: int, free_tokens: int) -> list[Group]:
        """Groups to start now, one per request in turn, while the next in turn fits."""
        out: list[Group] = []
        while self._turns:
            request, groups = self._turns[0]
            g = groups[0]
            if len(g.jobs) > free_rows or g.cost > free_tokens:
                break
            self._turns.popleft()
            groups.popleft()
            out.append(g)
            free_rows, free_tokens = free_rows - len(g.jobs), free_tokens - g.cost
            if groups:
                self._turns.append((request, groups))
        return out

    def remove(self, keep: Any) -> list[Group]:
        """Take out the requests for which keep(request) is false; returns their waiting groups."""
        gone = [g for r, gs in self._turns if not keep(r) for g in gs]
        self._turns = deque((r, gs) for r, gs in self._turns if keep(r))
        return gone

    def requests(self) -> list[Any]:
        return [r for r, _ in self._turns]
