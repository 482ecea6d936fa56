"""A sliding minute of requests and tokens, estimated from two fixed ones: O(1), no allocation.

The count over the last 60 s is taken as this minute's count plus the previous minute's,
weighted by how much of it still lies within the last 60 s (the usual two-window estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE = 60.0


@dataclass(slots=True)
class Window:
    start: float = 0.0
    requests: int = 0
    tokens: int = 0
    last_requests: int = 0
    last_tokens: int = 0

    def _roll(self, now: float) -> float:
        """Move to `now`; the share of the previous minute still inside the last 60 s."""
        elapsed = now - self.start
        if elapsed >= MINUTE:
            if elapsed >= 2 * MINUTE:
                self.last_requests = self.last_tokens = 0
            else:
                self.last_requests, self.last_tokens = self.requests, self.tokens
            self.requests = self.tokens = 0
            self.start = now - (elapsed % MINUTE)
            elapsed = now - self.start
        return 1.0 - elapsed / MINUTE

    def full(self, now: float, rpm: int | None, tpm: int | None) -> bool:
        """True when one more request would go over `rpm`, or the tokens are at `tpm`."""
        share = self._roll(now)
        if rpm is not None and self.requests + self.last_requests * share >= rpm:
            return True
        return tpm is not None and self.tokens + self.last_tokens * share >= tpm

    def add(self, now: float, requests: int, tokens: int) -> None:
        self._roll(now)
        self.requests += requests
        self.tokens = max(0, self.tokens + tokens)

    def wait(self, now: float) -> float:
        """Seconds until the current minute ends, when the estimate drops."""
        self._roll(now)
        return max(1.0, MINUTE - (now - self.start))
