"""This process's view of the shared counters: what limits admit by, without asking Redis.

The sync (sync.py) keeps it in step with Redis in the background; requests only read it and
add to it. Windows handed out here stand in for `window.Window` in the key limits and the
router, so that neither knows whether its counts are shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.config import SharedSettings
from sidecar.shared.tally import Tally


class Ledger:
    def __init__(self, settings: SharedSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.tallies: dict[str, Tally] = {}
        self.offset = 0.0  # Redis's clock minus ours, as of the last sync
        self.up = False  # the last sync (or exact admission) reached Redis
        self.instances = 1  # live instances, as of the last sync that reached Redis
        self.exact = settings.sync_interval == 0
        self.deny_when_down = settings.on_redis_down == "deny"

    def wall(self) -> float:
        """Now, on Redis's clock."""
        return self.clock() + self.offset

    def window(self, counter: str) -> SharedWindow:
        tally = self.tallies.get(counter)
        if tally is None:
            tally = self.tallies[counter] = Tally(counter, int(self.wall() // 60))
        return SharedWindow(self, tally)

    @property
    def denying(self) -> bool:
        """Redis is away and on_redis_down is deny: what a shared limit governs gets 503."""
        return not self.up and self.deny_when_down

    @property
    def share(self) -> float | None:
        """None while Redis is reachable (everyone's counts apply); else this instance's part
        of each limit (on_redis_down: local)."""
        return None if self.up else 1.0 / max(1, self.instances)


class SharedWindow:
    """A `window.Window` whose counts are everyone's. `now` is ignored: minutes are Redis's."""

    __slots__ = ("ledger", "tally")

    def __init__(self, ledger: Ledger, tally: Tally) -> None:
        self.ledger = ledger
        self.tally = tally

    def full(self, now: float, rpm: int | None, tpm: int | None) -> bool:
        ledger = self.ledger
        return self.tally.full(ledger.wall(), rpm, tpm, ledger.share)

    def add(self, now: float, requests: int, tokens: int) -> None:
        ledger = self.ledger
        if requests and ledger.exact:
            # With sync_interval 0 an admission is Redis's to count (the ADMIT script), never
            # ours to send: one that fell back while Redis was away is not counted there
            # (under the fallback's share), and one whose ADMIT timed out may have been.
            self.tally.add_own(ledger.wall(), requests, tokens)
        else:
            self.tally.add(ledger.wall(), requests, tokens)

    def wait(self, now: float) -> float:
        return self.tally.wait(self.ledger.wall())
