"""The background half of shared state: every sync_interval one script run in Redis sends what
this instance counted, beats its heartbeat, publishes the cooldowns it entered and reads back
everyone's counts and cooldowns. A request never waits for it. With sync_interval 0 the
admissions themselves ask Redis (admit()), exactly, and the loop keeps the rest in step.

When Redis is away the ledger says so and the limits fall back (on_redis_down); one log line
when it goes, one when it is back, and the sync keeps trying every second meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from sidecar.budgets import Budgets
from sidecar.shared import scripts
from sidecar.shared.ledger import Ledger
from sidecar.shared.link import Link, RedisDown
from sidecar.shared.tally import Slot, Tally

log = logging.getLogger("sidecar")

DOWN_RETRY = 1.0  # seconds before the first attempt again once Redis is away ...
MAX_RETRY = 4.0  # ... doubling up to this
EXACT_LOOP = 0.5  # seconds between syncs when admissions ask Redis themselves
MIN_HEARTBEAT = 5.0  # seconds an instance counts as live after its last sync, at least

Cooler = Callable[[str, float, str], None]  # (deployment id, seconds left, cause)


class Sync:
    def __init__(
        self,
        ledger: Ledger,
        link: Link,
        watched: Callable[[], Iterable[str]],
        cool: Cooler,
    ) -> None:
        self.ledger = ledger
        self.link = link
        self.watched = watched  # deployments whose cooldowns are shared (groups of two or more)
        self.cool = cool  # applies a cooldown another instance entered
        settings = ledger.settings
        self.namespace = settings.namespace
        self.interval = settings.sync_interval or EXACT_LOOP
        self.heartbeat_ms = int(max(MIN_HEARTBEAT, 3 * self.interval) * 1000)
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.synced_at: float | None = None  # time.monotonic() of the last good sync
        self.cooling: list[tuple[str, int, str]] = []  # to publish: (deployment, ms, cause)
        self._wake = asyncio.Event()
        self._one_at_a_time = asyncio.Lock()  # a tick that returns has everything before it sent
        self._task: asyncio.Task[None] | None = None
        self._said_down = False  # the log line for Redis being away has been written
        self.seq = 0  # the last batch of deltas made
        self._unconfirmed: tuple[int, list[Any]] | None = None  # sent, not confirmed
        self._down_for = 0  # syncs failed in a row: the retry backs off
        self.budgets: Budgets | None = None  # spend to share, when keys have budgets
        self._spend_seq = 0
        self._spend_unconfirmed: tuple[int, list[tuple[str, int, float, int]]] | None = None

    async def start(self) -> None:
        """One sync before serving (bounded by the link's timeout), so that the first
        requests already see everyone's counts; then the loop."""
        await self.tick()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """The last counts sent and this instance out of the live ones (at most the link's
        timeout each, when Redis is away), then the connections closed."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.ledger.up:
            await self.tick()
            with contextlib.suppress(RedisDown):
                await self.link.command("ZREM", f"{self.namespace}:instances", self.instance)
        await self.link.close()

    def publish(self, deployment: str, seconds: float, cause: str) -> None:
        """A cooldown this instance entered: sent at once, not at the next interval."""
        self.cooling.append((deployment, max(1, int(seconds * 1000)), cause))
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            wait = self.interval
            if not self.ledger.up:  # 1, 2, then every 4 s: a Redis whose name does not
                # resolve must not fill the resolver's threads, which upstream calls share
                wait = max(wait, min(DOWN_RETRY * 2 ** max(0, self._down_for - 1), MAX_RETRY))
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.tick()
            except Exception:  # never let the loop die: the next tick tries again
                log.exception("shared state: sync failed")

    async def tick(self) -> None:
        async with self._one_at_a_time:
            await self._tick()

    def _batch(self, tallies: list[Tally]) -> tuple[int, list[Any]]:
        """(its sequence number, the deltas) to send: the last batch again while Redis has not
        confirmed it, else what was counted since."""
        if self._unconfirmed is not None:
            return self._unconfirmed
        deltas: list[Any] = []
        for tally in tallies:
            for minute, requests, tokens in tally.outgoing():
                deltas.append((tally.name, minute, requests, tokens))
        if not deltas:
            return self.seq, []
        self.seq += 1
        self._unconfirmed = (self.seq, deltas)
        return self._unconfirmed

    async def _tick(self) -> None:
        ledger = self.ledger
        tallies = list(ledger.tallies.values())
        seq, deltas = self._batch(tallies)
        cooling, self.cooling = self.cooling, []
        watched = list(self.watched())
        args: list[Any] = [self.namespace, self.instance, self.heartbeat_ms, seq, len(deltas)]
        for delta in deltas:
            args += delta
        args += [len(tallies), *(t.name for t in tallies)]
        args.append(len(cooling))
        for deployment, ms, cause in cooling:
            args += (deployment, ms, cause)
        args += [len(watched), *watched]
        try:
            out = await self.link.run(scripts.SYNC, args)
        except RedisDown as exc:
            self.cooling[:0] = cooling
            self._down(str(exc))
            return
        self._unconfirmed = None
        self._apply(out, tallies, watched)
        if self.budgets is not None and self.budgets.budgeted:
            await self._share_spend(self.budgets)

    async def _share_spend(self, budgets: Budgets) -> None:
        """Send what keys spent here since the last sync and read back everyone's sums. A
        batch that may have run (a timeout) is sent again under its sequence number."""
        if self._spend_unconfirmed is None:
            self._spend_seq += 1
            self._spend_unconfirmed = (self._spend_seq, budgets.outgoing())
        seq, batch = self._spend_unconfirmed
        args: list[Any] = [self.namespace, self.instance, seq, len(batch)]
        for name, period, delta, ttl in batch:
            args += (name, period, f"{delta:.17g}", ttl)
        try:
            out = await self.link.run(scripts.SPEND, args)
        except RedisDown as exc:
            self._down(str(exc))
            return
        self._spend_unconfirmed = None
        for (name, period, _, _), total in zip(batch, out, strict=True):
            budgets.synced(name, period, float(total))

    def _apply(self, out: list[Any], tallies: list[Tally], watched: list[str]) -> None:
        ledger = self.ledger
        seconds, micros, instances = int(out[0]), int(out[1]), int(out[2])
        redis_now = seconds + micros / 1e6
        ledger.offset = redis_now - ledger.clock()
        ledger.instances = max(1, instances)
        minute = seconds // 60
        at = 3
        for tally in tallies:
            r, t, last_r, last_t = (int(x) for x in out[at : at + 4])
            tally.synced(minute, Slot(r, t), Slot(last_r, last_t))
            at += 4
        for deployment in watched:
            ttl, cause = int(out[at]), out[at + 1]
            if ttl > 0:
                self.cool(
                    deployment, ttl / 1000, cause.decode() if isinstance(cause, bytes) else cause
                )
            at += 2
        self.synced_at = time.monotonic()
        self._up()

    async def admit(
        self, counter: str, rpm: int | None, tpm: int | None, tokens: int
    ) -> tuple[float, str] | None:
        """sync_interval 0: ask Redis to admit a request of `tokens` against a counter. None
        when admitted, else (seconds until it may be, the limit reached: "rpm" or "tpm");
        RedisDown when Redis is away (the caller then falls back as on_redis_down says)."""
        if not self.ledger.up:
            # Away: the sync probes it; admissions do not pile connection attempts on it.
            raise RedisDown("away since the last sync")
        counters = [(counter, rpm, tpm)]
        args: list[Any] = [self.namespace, tokens, len(counters)]
        for name, rpm, tpm in counters:
            args += (name, -1 if rpm is None else rpm, -1 if tpm is None else tpm)
        try:
            out = await self.link.run(scripts.ADMIT, args)
        except RedisDown as exc:
            self._down(str(exc))
            raise
        self._up()
        if int(out[0]) == 1:
            return None
        return int(out[1]) / 1000, "rpm" if int(out[3]) == 1 else "tpm"

    def _down(self, why: str) -> None:
        self.ledger.up = False
        self._down_for += 1
        if not self._said_down:
            self._said_down = True
            fallback = (
                "requests under a shared limit get 503"
                if self.ledger.deny_when_down
                else f"each limit is enforced locally at 1/{self.ledger.instances} of itself"
            )
            log.warning(
                "shared state: Redis at %s is unreachable (%s); %s until it is back",
                self.ledger.settings.target,
                why,
                fallback,
            )

    def _up(self) -> None:
        self._down_for = 0
        if not self.ledger.up:
            self.ledger.up = True
            if self._said_down:
                self._said_down = False
                log.warning(
                    "shared state: Redis at %s is back; limits are shared again",
                    self.ledger.settings.target,
                )

    def gauges(self) -> tuple[bool, float | None, int]:
        """For /metrics: Redis reachable, seconds since the last good sync, live instances."""
        age = None if self.synced_at is None else time.monotonic() - self.synced_at
        return self.ledger.up, age, self.ledger.instances
