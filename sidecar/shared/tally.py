"""One shared rpm/tpm counter: what every instance has counted, as last synced, plus ours since.

Minutes are whole minutes of Redis's clock (the `wall` each call passes), so that all instances
roll over together; the count over the last 60 s is this minute's plus the previous minute's
weighted by how much of it is still inside them, as in `window.py`. Pure: no I/O, no clock.

The numbers kept for the current and the previous minute:
- `synced`: everyone's total, as Redis answered at the last sync (ours included);
- `sending`: ours, on their way to Redis in the sync under way (not in `synced` yet);
- `pending`: ours since, sent at the next sync;
- `own`: ours alone, all of it: what `on_redis_down: local` compares with its share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MINUTE = 60.0


@dataclass(slots=True)
class Slot:
    """Requests and tokens of one minute."""

    requests: int = 0
    tokens: int = 0

    def add(self, requests: int, tokens: int) -> None:
        self.requests += requests
        self.tokens += tokens

    def take(self) -> tuple[int, int]:
        taken = self.requests, self.tokens
        self.requests = self.tokens = 0
        return taken


@dataclass(slots=True)
class Minute:
    synced: Slot = field(default_factory=Slot)
    sending: Slot = field(default_factory=Slot)
    pending: Slot = field(default_factory=Slot)
    own: Slot = field(default_factory=Slot)

    def seen(self) -> tuple[int, int]:
        """Everyone's count as far as this instance knows it."""
        s, g, p = self.synced, self.sending, self.pending
        return s.requests + g.requests + p.requests, s.tokens + g.tokens + p.tokens


@dataclass(slots=True)
class Tally:
    name: str  # "key:<name>" or "deployment:<id>": the Redis key's stem
    minute: int = 0  # the minute `cur` counts (Redis time // 60)
    cur: Minute = field(default_factory=Minute)
    prev: Minute = field(default_factory=Minute)

    def roll(self, wall: float) -> float:
        """Move to the minute of `wall`; the share of the previous minute still inside the
        last 60 s."""
        minute = int(wall // MINUTE)
        if minute != self.minute:
            if minute == self.minute + 1:
                self.prev, self.cur = self.cur, Minute()
            elif minute > self.minute:
                self.prev, self.cur = Minute(), Minute()
            # An earlier minute (the clock offset moved back a little): stay where we are.
            self.minute = max(self.minute, minute)
        return 1.0 - (wall - self.minute * MINUTE) / MINUTE

    def full(
        self, wall: float, rpm: int | None, tpm: int | None, share: float | None = None
    ) -> bool:
        """True when one more request would go over `rpm`, or the tokens are at `tpm`:
        everyone's count against the limits, or (with a `share`: Redis is away) ours alone
        against that share of them."""
        weight = self.roll(wall)
        if share is not None:
            cur, prev = self.cur.own, self.prev.own
            now_r, now_t, last_r, last_t = cur.requests, cur.tokens, prev.requests, prev.tokens
        else:
            now_r, now_t = self.cur.seen()
            last_r, last_t = self.prev.seen()
        part = 1.0 if share is None else share
        if rpm is not None and now_r + last_r * weight >= rpm * part:
            return True
        return tpm is not None and now_t + last_t * weight >= tpm * part

    def add(self, wall: float, requests: int, tokens: int) -> None:
        self.roll(wall)
        cur = self.cur
        if tokens < 0:
            # A correction (the reply's usage below the estimate) takes back at most what
            # this minute holds of ours: the estimate may have been counted a minute earlier,
            # and a minute's count must never go below what the others added to it.
            tokens = max(tokens, -cur.own.tokens)
        cur.pending.add(requests, tokens)
        cur.own.add(requests, tokens)

    def add_own(self, wall: float, requests: int, tokens: int) -> None:
        """Ours, counted in Redis by the admission itself (sync_interval 0): for the local
        fallback only, and in the view until the next sync says what Redis holds."""
        self.roll(wall)
        self.cur.own.add(requests, tokens)
        self.cur.synced.add(requests, tokens)

    def wait(self, wall: float) -> float:
        """Seconds until this minute ends, when the estimate drops."""
        self.roll(wall)
        return max(1.0, MINUTE - (wall - self.minute * MINUTE))

    # The sync's side.

    def outgoing(self) -> list[tuple[int, int, int]]:
        """(minute, requests, tokens) to add in Redis: what is pending moves to `sending`."""
        out = []
        for minute, m in ((self.minute - 1, self.prev), (self.minute, self.cur)):
            requests, tokens = m.pending.take()
            if requests or tokens:
                m.sending.add(requests, tokens)
                out.append((minute, requests, tokens))
        return out

    def synced(self, minute: int, now: Slot, last: Slot) -> None:
        """Redis's totals for `minute` and the one before, which include what was sent."""
        self.roll(minute * MINUTE)
        if minute < self.minute:  # a late answer for a minute already gone: keep only `last`
            if minute == self.minute - 1:
                self.prev.synced, self.prev.sending = now, Slot()
            return
        self.cur.synced, self.cur.sending = now, Slot()
        self.prev.synced, self.prev.sending = last, Slot()
