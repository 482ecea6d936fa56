"""Which deployment of a group serves a request: strategies, cooldowns, per-deployment limits.

Decisions only: the clock and the random draw are injected, nothing here does I/O. State is
kept per deployment id, in plain counters updated in place (one event loop: no locks), so a
choice costs O(group) and allocates nothing but its answer.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.config import RouterSettings
from sidecar.deployment import Deployment
from sidecar.shared.ledger import Ledger, SharedWindow
from sidecar.table import Group
from sidecar.window import Window

FAIL_WINDOW = 60.0  # seconds over which allowed_fails are counted (LiteLLM: per minute)
EXPLORE = 0.1  # latency-based routing tries a random deployment this often, to keep learning
TTFB_WEIGHT = 0.3  # weight of the newest sample in the time-to-first-byte average
FAILED_ANSWER = 5.0  # seconds: how a failed call counts in that average (slower than most)

RATE_LIMIT = "rate_limit"
ERROR = "error"


@dataclass(slots=True)
class Health:
    """What the router knows of one deployment."""

    in_flight: int = 0
    failures: deque[float] = field(default_factory=deque)
    cooling_until: float = 0.0
    cooling_cause: str = ""
    ttfb: float | None = None  # smoothed seconds to the reply's head; None before a sample
    usage: Window | SharedWindow = field(default_factory=Window)  # for rpm/tpm limits


@dataclass(frozen=True, slots=True)
class Blocked:
    """No deployment of a group may take a request now: why, and for how long."""

    status: int  # 429 when rate limits are the cause, else 503
    retry_after: float  # seconds
    denied: bool = False  # shared limits, Redis away, on_redis_down: deny


class Router:
    def __init__(
        self,
        settings: RouterSettings,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.draw = draw
        self.health: dict[str, Health] = {}
        # Shared state (Redis): the counts of limited deployments are everyone's, and the
        # cooldowns this router enters are told to `on_cooldown` (deployment, seconds, cause).
        self.shared: Ledger | None = None
        self.on_cooldown: Callable[[str, float, str], None] | None = None

    def of(self, deployment: Deployment) -> Health:
        health = self.health.get(deployment.id)
        if health is None:
            health = self.health[deployment.id] = Health(usage=self._usage(deployment))
        return health

    def _usage(self, d: Deployment) -> Window | SharedWindow:
        if self.shared is not None and (d.rpm is not None or d.tpm is not None):
            return self.shared.window(f"deployment:{d.id}")
        return Window(start=self.clock())

    def share(self, d: Deployment) -> None:
        """Count a limited deployment in the shared state, also when it was served before a
        reload gave it its limit (its counts so far were its own)."""
        health = self.of(d)
        if not isinstance(health.usage, SharedWindow):
            health.usage = self._usage(d)

    # Availability.

    def _limited(self, d: Deployment, health: Health, now: float) -> bool:
        if not self.settings.enable_pre_call_checks or (d.rpm is None and d.tpm is None):
            return False
        if self.shared is not None and self.shared.denying:
            return True  # Redis is away and on_redis_down is deny
        return health.usage.full(now, d.rpm, d.tpm)

    def available(self, d: Deployment, now: float) -> bool:
        health = self.of(d)
        return health.cooling_until <= now and not self._limited(d, health, now)

    # The choice.

    def choose(
        self, group: Group, exclude: frozenset[str] | set[str] = frozenset()
    ) -> Deployment | None:
        """A deployment of the group that is not cooling down, within its limits and not in
        `exclude`; None when there is none."""
        now = self.clock()
        members = group.deployments
        strategy = self.settings.routing_strategy
        if strategy == "least-busy":
            return self._least_busy(members, exclude, now)
        if strategy == "latency-based-routing" and self.draw() >= EXPLORE:
            return self._fastest(members, exclude, now)
        return self._weighted(members, exclude, now)

    def _weighted(
        self, members: tuple[Deployment, ...], exclude: frozenset[str] | set[str], now: float
    ) -> Deployment | None:
        if len(members) == 1:  # the common group of one: no draw
            only = members[0]
            return only if only.id not in exclude and self.available(only, now) else None
        total = 0.0
        for d in members:
            if d.id not in exclude and self.available(d, now):
                total += _weight(d)
        if total <= 0:
            return None
        point = self.draw() * total
        last = None
        for d in members:
            if d.id not in exclude and self.available(d, now):
                last = d
                point -= _weight(d)
                if point < 0:
                    return d
        return last

    def _least_busy(
        self, members: tuple[Deployment, ...], exclude: frozenset[str] | set[str], now: float
    ) -> Deployment | None:
        # Start at a random member so that ties do not all go to the first one.
        count = len(members)
        start = int(self.draw() * count)
        best = None
        best_load = math.inf
        for i in range(count):
            d = members[(start + i) % count]
            if d.id in exclude or not self.available(d, now):
                continue
            load = float(self.of(d).in_flight)  # best_load starts as inf
            if load < best_load:
                best, best_load = d, load
        return best

    def _fastest(
        self, members: tuple[Deployment, ...], exclude: frozenset[str] | set[str], now: float
    ) -> Deployment | None:
        best = None
        best_ttfb = math.inf
        for d in members:
            if d.id in exclude or not self.available(d, now):
                continue
            ttfb = self.of(d).ttfb
            if ttfb is None:
                return d  # unmeasured: measure it
            if ttfb < best_ttfb:
                best, best_ttfb = d, ttfb
        return best

    def blocked(self, group: Group) -> Blocked:
        """Why nothing of the group is available, and when something will be again."""
        now = self.clock()
        waits = []
        limited = 0
        for d in group.deployments:
            health = self.of(d)
            if health.cooling_until > now:
                waits.append(health.cooling_until - now)
                limited += health.cooling_cause == RATE_LIMIT
            elif self._limited(d, health, now):
                waits.append(health.usage.wait(now))
                limited += 1
        if self.shared is not None and self.shared.denying and limited:
            return Blocked(503, 1.0, denied=True)
        status = 429 if waits and limited == len(waits) else 503
        return Blocked(status, min(waits) if waits else 1.0)

    # What happened.

    def started(self, d: Deployment, tokens: int) -> None:
        health = self.of(d)
        health.in_flight += 1
        if self.settings.enable_pre_call_checks:
            health.usage.add(self.clock(), 1, tokens)

    def used(self, d: Deployment, tokens: int) -> None:
        """Correct the tokens counted for a call once its reply says how many it took."""
        if self.settings.enable_pre_call_checks:
            self.of(d).usage.add(self.clock(), 0, tokens)

    def finished(self, d: Deployment) -> None:
        self.of(d).in_flight -= 1

    def answered(self, d: Deployment, ttfb: float) -> None:
        health = self.of(d)
        health.ttfb = (
            ttfb if health.ttfb is None else health.ttfb + TTFB_WEIGHT * (ttfb - health.ttfb)
        )

    def failed(self, d: Deployment, cause: str, group_size: int) -> bool:
        """Count a failure; True when it puts the deployment into cooldown. A group's only
        deployment never cools down (as in LiteLLM): that would refuse calls the upstream
        might still answer."""
        now = self.clock()
        health = self.of(d)
        failures = health.failures
        failures.append(now)
        while failures and failures[0] <= now - FAIL_WINDOW:
            failures.popleft()
        if group_size < 2 or len(failures) <= self.settings.allowed_fails:
            return False
        failures.clear()
        health.cooling_until = now + self.settings.cooldown_time
        health.cooling_cause = cause
        if self.on_cooldown is not None:
            self.on_cooldown(d.id, self.settings.cooldown_time, cause)
        return True

    def cool(self, deployment_id: str, seconds: float, cause: str) -> None:
        """A cooldown another instance entered (shared state): skip the deployment as long."""
        health = self.health.get(deployment_id)
        if health is None:
            health = self.health[deployment_id] = Health(usage=Window(start=self.clock()))
        until = self.clock() + seconds
        if until > health.cooling_until:
            health.cooling_until = until
            health.cooling_cause = cause


def _weight(d: Deployment) -> float:
    """simple-shuffle's weight: `weight`, else `rpm`, else `tpm`, else 1 (LiteLLM's order)."""
    if d.weight is not None:
        return d.weight
    if d.rpm is not None:
        return float(d.rpm)
    if d.tpm is not None:
        return float(d.tpm)
    return 1.0
