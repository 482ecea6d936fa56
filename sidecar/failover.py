"""What a request that failed over keeps, and how long it waits before the next attempt."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from aiohttp import web

from sidecar import errors
from sidecar.config import RouterSettings
from sidecar.headers import ATTEMPTS_HEADER, reply_headers
from sidecar.router import Blocked
from sidecar.upstream import Exchange

BACKOFF = 0.05  # seconds before the first retry; doubled for each next one, with jitter
MAX_BACKOFF = 1.0
MAX_RETRY_AFTER = 2.0  # seconds: an upstream's longer Retry-After is not waited for


@dataclass(slots=True)
class Failure:
    """The last thing that went wrong, kept to answer with when nothing is left to try."""

    error: errors.GatewayError | None = None
    status: int = 0
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    retry_hint: float = 0.0  # seconds until the group takes calls again, when it is known

    @classmethod
    def of_reply(cls, exchange: Exchange, body: bytes, named: dict[str, str]) -> Failure:
        """An upstream's error reply, relayed as it came when nothing else answers."""
        headers, _ = reply_headers(exchange.headers, named)
        return cls(status=exchange.status, body=body, headers=list(headers.items()))

    @classmethod
    def of_block(cls, blocked: Blocked, group: str) -> Failure:
        wait = max(1, math.ceil(blocked.retry_after))
        why = "rate limits" if blocked.status == 429 else "repeated failures"
        return cls(
            errors.GatewayError(
                blocked.status,
                f"Every deployment of '{group}' is cooling down after {why}; retry in {wait}s.",
                errors.RATE_LIMIT if blocked.status == 429 else errors.UNAVAILABLE,
                "deployments_cooling_down",
                headers={"Retry-After": str(wait)},
            )
        )

    def retry_after(self) -> float:
        """The upstream's Retry-After in seconds (0 when it gave none, or a date)."""
        for name, value in self.headers:
            if name.lower() == "retry-after":
                try:
                    return max(0.0, float(value))
                except ValueError:
                    return 0.0
        return 0.0

    def response(self, attempts: int) -> web.Response:
        if self.error is not None:
            response = self.error.response()
        else:
            response = web.Response(status=self.status, body=self.body, headers=self.headers)
            if self.retry_hint and "Retry-After" not in response.headers:
                response.headers["Retry-After"] = str(max(1, math.ceil(self.retry_hint)))
        response.headers[ATTEMPTS_HEADER] = str(attempts)
        return response


def pause(attempt: int, same: bool, last: Failure | None, settings: RouterSettings) -> float:
    """Seconds to wait before another attempt: a short jittered backoff, at least the
    configured retry_after, and, before asking the same deployment again, the Retry-After it
    sent (a longer one than MAX_RETRY_AFTER is not waited for: that deployment is not asked
    again)."""
    pause: float = min(MAX_BACKOFF, BACKOFF * 2 ** (attempt - 1)) * (0.5 + random.random())
    pause = max(pause, settings.retry_after)
    if same and last is not None:
        pause = max(pause, min(last.retry_after(), MAX_RETRY_AFTER))
    return pause
