"""Per-key rpm and tpm limits over a sliding minute: O(1) a request, no lock. With shared
state the windows are everyone's (shared.ledger), and with sync_interval 0 Redis admits."""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar import errors
from sidecar.auth import ClientKey
from sidecar.shared.ledger import Ledger, SharedWindow
from sidecar.shared.link import RedisDown
from sidecar.shared.sync import Sync
from sidecar.window import Window


class KeyLimits:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.windows: dict[str, Window | SharedWindow] = {}  # by key name: survives reloads
        self.shared: Ledger | None = None  # shared state (Redis): the counts are everyone's

    def window(self, key: ClientKey) -> Window | SharedWindow:
        window = self.windows.get(key.name)
        if window is None:
            if self.shared is not None:
                window = self.shared.window(f"key:{key.name}")
            else:
                window = Window(start=self.clock())
            self.windows[key.name] = window
        return window

    def admit(self, key: ClientKey, tokens: int, tpm: bool = True) -> None:
        """Count a request of `tokens` (an estimate) against the key, or raise its 429;
        `tpm` False: against its rpm only (a reply from the cache, which spends no tokens)."""
        key_tpm = key.tpm if tpm else None
        if key.rpm is None and key_tpm is None:
            return
        if self.shared is not None and self.shared.denying:
            raise errors.shared_state_down()
        now = self.clock()
        window = self.window(key)
        if window.full(now, key.rpm, key_tpm):
            what = (
                "requests-per-minute"
                if key.rpm is not None and window.full(now, key.rpm, None)
                else "tokens-per-minute"
            )
            raise errors.rate_limited(key.name, what, window.wait(now))
        window.add(now, 1, tokens)

    async def admit_exactly(
        self, sync: Sync, key: ClientKey, tokens: int, tpm: bool = True
    ) -> None:
        """sync_interval 0: Redis admits, exactly, or raises the key's 429; while it is
        away, the fallback (admit) does. A key without limits never asks Redis."""
        if key.rpm is None and (key.tpm is None or not tpm):
            return
        try:
            refused = await sync.admit(f"key:{key.name}", key.rpm, key.tpm if tpm else None, tokens)
        except RedisDown:
            self.admit(key, tokens, tpm)
            return
        if refused is not None:
            wait, limit = refused
            what = "requests-per-minute" if limit == "rpm" else "tokens-per-minute"
            raise errors.rate_limited(key.name, what, wait)
        self.window(key).add(self.clock(), 1, tokens)  # recorded, not checked again

    def used(self, key: ClientKey, correction: int) -> None:
        """Replace the estimate by what the upstream counted, once it has."""
        window = self.windows.get(key.name)
        if window is not None and correction:
            window.add(self.clock(), 0, correction)
