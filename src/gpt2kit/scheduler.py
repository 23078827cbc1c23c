"""Admission: which waiting rows start next, within the batch's rows and KV-cache budget, fairly.

The KV cache is one dense block (batching.RunningBatch): every row holds as many columns as the row that
reaches furthest back, so what the running rows cost is rows x the largest reservation among them, not the
sum of their reservations. Admission checks exactly that (KvBudget), so the cache a running batch
allocates never exceeds --max-batch-tokens positions.

A request's sequences come in groups: the samples of one prompt, prefilled once and admitted together
(split where one group would not fit the batch or the budget). Waiting requests take turns, one group
each (round-robin), so a request of 64 rows cannot hold back a one-row request behind all of its rows.
The turn order is kept when the next group does not fit: it waits for room rather than be overtaken
for ever by smaller ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .sequence import Request, Sequence


class TooLarge(Exception):
    """A request one of whose rows could never fit the server's budget."""


@dataclass
class Group:
    """Sequences of one request continuing the same prompt: one prefill, admitted together."""

    request: Request
    seqs: list[Sequence]
    row_cost: int  # KV positions each row reserves (Sequence.reservation), the largest of its rows'


def make_groups(request: Request, *, n_ctx: int, max_rows: int, budget: int) -> list[Group]:
    """Consecutive sequences of equal prompts, in groups that fit `max_rows` rows and `budget` positions when
    they run alone (so every group is admitted once the batch empties); TooLarge if a single row does not fit."""
    groups: list[Group] = []
    for seq in request.seqs:
        cost = seq.reservation(n_ctx)
        if cost > budget:
            raise TooLarge(
                f"a row of this request needs {cost} KV-cache positions (prompt + max_tokens); this "
                f"server's --max-batch-tokens is {budget}: ask for fewer tokens"
            )
        last = groups[-1] if groups else None
        if (
            last is not None
            and last.seqs[0].ids == seq.ids
            and len(last.seqs) < max_rows
            and (len(last.seqs) + 1) * max(last.row_cost, cost) <= budget
        ):
            last.seqs.append(seq)
            last.row_cost = max(last.row_cost, cost)
        else:
            groups.append(Group(request, [seq], cost))
    return groups


class KvBudget:
    """What admitting more rows would cost: rows x the largest reservation, within `positions` and `max_rows`."""

    def __init__(self, *, positions: int, max_rows: int, running: list[int]):
        """running: the reservation (row_cost) of every row admitted and not finished."""
        self.positions, self.max_rows = positions, max_rows
        self.rows, self.longest = len(running), max(running, default=0)

    def take(self, group: Group) -> bool:
        """Reserve room for `group` if it fits; False (and nothing reserved) if not."""
        rows, longest = self.rows + len(group.seqs), max(self.longest, group.row_cost)
        if rows > self.max_rows or rows * longest > self.positions:
            return False
        self.rows, self.longest = rows, longest
        return True


class Scheduler:
    """Requests waiting for room, each with its groups not yet admitted."""

    def __init__(self) -> None:
        self._turns: deque[tuple[Request, deque[Group]]] = deque()

    def __len__(self) -> int:
        """Requests with rows still waiting."""
        return len(self._turns)

    def add(self, request: Request, groups: list[Group]) -> None:
        if groups:
            self._turns.append((request, deque(groups)))

    def admit(self, take: Callable[[Group], bool]) -> list[Group]:
        """Groups to start now, one per request in turn, while take(next in turn) says it fits (and reserves it)."""
        out: list[Group] = []
        while self._turns:
            request, groups = self._turns[0]
            g = groups[0]
            if not take(g):
                break
            self._turns.popleft()
            groups.popleft()
            out.append(g)
            if groups:
                self._turns.append((request, groups))
        return out

    def remove(self, keep: Callable[[Request], bool]) -> list[Group]:
        """Take out the requests for which keep(request) is false; returns their waiting groups."""
        gone = [g for r, gs in self._turns if not keep(r) for g in gs]
        self._turns = deque((r, gs) for r, gs in self._turns if keep(r))
        return gone

    def requests(self) -> list[Request]:
        """Safe from the HTTP thread (queue_depth): tuple() copies the deque in one C call, under the GIL, where
        a Python-level loop over it could see the worker's next admit and raise 'deque mutated during iteration'."""
        return [r for r, _ in tuple(self._turns)]
