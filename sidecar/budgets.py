"""What each key has spent in its budget period, against its max_budget. No database: the
spend is kept in this process, and with the shared state configured on Redis too (synced in
the background with the rest, shared.sync), so that restarts and replicas see the same sum.

Periods are cut where LiteLLM cuts them, in UTC: `1d` at midnight, `7d` on Mondays at
midnight, `30d` (and `1mo`) on the first of each month; any other duration at whole multiples
of itself since the epoch. So every replica agrees on them without talking. A key with no
budget_duration has one period, for ever.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sidecar import errors
from sidecar.auth import ClientKey
from sidecar.shared.ledger import Ledger

LIFETIME = 0  # the one period of a key without budget_duration
DAY = 86400.0
WEEK = 7 * DAY
MONTH = 30 * DAY  # LiteLLM's 30d, and 1mo: a calendar month
_MONDAY = 4 * DAY  # the epoch was a Thursday: weeks are counted from Monday 1970-01-05


def period_of(duration: float | None, now: float) -> tuple[int, float | None]:
    """(the period's number, when it ends) at `now` (Unix time); a lifetime has no end."""
    if duration is None:
        return LIFETIME, None
    if duration == WEEK:
        index = math.floor((now - _MONDAY) / WEEK)
        return index, _MONDAY + (index + 1) * WEEK
    if duration == MONTH:
        day = datetime.datetime.fromtimestamp(now, datetime.UTC)
        index = day.year * 12 + day.month - 1
        year, month = divmod(index + 1, 12)
        end = datetime.datetime(year, month + 1, 1, tzinfo=datetime.UTC).timestamp()
        return index, end
    index = math.floor(now / duration)
    return index, (index + 1) * duration


@dataclass(slots=True)
class Book:
    period: int
    total: float = 0.0  # spent in the period: everyone's as of the last sync, and ours since
    pending: float = 0.0  # ours, not yet sent to Redis


class Budgets:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.books: dict[str, Book] = {}  # by key name: survives reloads
        self.budgeted: dict[str, ClientKey] = {}  # the table's keys with a budget, by name
        self.shared: Ledger | None = None  # shared state: on_redis_down deny governs budgets too

    def watch(self, keys: Iterable[ClientKey]) -> None:
        """The keys of a (re)loaded table that have a budget: these are synced."""
        self.budgeted = {k.name: k for k in keys if k.max_budget is not None}

    def check(self, key: ClientKey) -> None:
        """The key's 429 when it has spent its budget in this period."""
        budget = key.max_budget
        if budget is None:
            return
        if self.shared is not None and self.shared.denying:
            raise errors.shared_state_down()  # the sum is everyone's, and cannot be read now
        now = self.clock()
        period, end = period_of(key.budget_duration, now)
        book = self._book(key.name, period)
        if book.total >= budget:
            resets_in = None if end is None else end - now
            raise errors.budget_exceeded(key.name, book.total, budget, resets_in)

    def spend(self, key: ClientKey, cost: float) -> None:
        if key.max_budget is None or cost <= 0:
            return
        book = self._book(key.name, period_of(key.budget_duration, self.clock())[0])
        book.total += cost
        book.pending += cost

    def _book(self, name: str, period: int) -> Book:
        book = self.books.get(name)
        if book is None or book.period != period:
            # A new period starts at nothing; what was not sent of the last one is dropped
            # with it (it can no longer refuse anything).
            book = self.books[name] = Book(period)
        return book

    def outgoing(self) -> list[tuple[str, int, float, int]]:
        """For the sync: (key, period, spent since the last sync, seconds Redis keeps the
        period's sum or 0 for ever) for every key with a budget; the pending sums are now
        the sync's, which sends them until Redis has them."""
        now = self.clock()
        out = []
        for name, key in self.budgeted.items():
            duration = key.budget_duration
            book = self._book(name, period_of(duration, now)[0])
            out.append(
                (name, book.period, book.pending, 0 if duration is None else int(duration * 2) + 60)
            )
            book.pending = 0.0
        return out

    def synced(self, name: str, period: int, total: float) -> None:
        """Everyone's sum for the period, as Redis had it (ours sent included)."""
        book = self.books.get(name)
        if book is not None and book.period == period:
            book.total = total + book.pending  # what was spent here while the sync ran

    def spent(self) -> list[tuple[str, float, float]]:
        """For /metrics: each budgeted key's spend in its current period, and its budget."""
        now = self.clock()
        return [
            (n, self._book(n, period_of(k.budget_duration, now)[0]).total, k.max_budget or 0.0)
            for n, k in self.budgeted.items()
        ]
