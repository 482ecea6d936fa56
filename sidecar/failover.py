"""What a request that failed over keeps, and how long it waits before the next attempt."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from sidecar import errors
from sidecar.config import RouterSettings
from sidecar.headers import ATTEMPTS_HEADER, DEPLOYMENT_HEADER, reply_headers
from sidecar.redact import redact_text
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
    def of_reply(
        cls, exchange: Exchange, body: bytes, named: dict[str, str], secrets: tuple[str, ...]
    ) -> Failure:
        """An upstream's error reply, to relay as pipe.relay would have when nothing else
        answers: checked for the deployment's keys, in the OpenAI shape when it is not JSON."""
        headers, _ = reply_headers(exchange.headers, named, secrets)
        try:
            fields, clean = errors.clean_error(
                exchange.status,
                redact_text(exchange.reason, secrets),
                headers,
                body,
                named[DEPLOYMENT_HEADER],
                secrets,
            )
        except errors.GatewayError as error:
            kept = [(k, v) for k, v in headers if k.lower() == "retry-after"]
            return cls(error, headers=kept)
        return cls(status=exchange.status, body=clean, headers=fields)

    @classmethod
    def of_block(cls, blocked: Blocked, group: str) -> Failure:
        if blocked.denied:
            return cls(errors.shared_state_down())
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

    def answer(self, attempts: int, anthropic: bool = False) -> errors.Answer:
        """What the client gets when nothing else answers, after `attempts` upstream calls;
        ours in Anthropic's shape when `anthropic`, an upstream's reply as it came."""
        if self.error is not None:
            answer = self.error.answer(anthropic)
            for name, value in self.headers:
                answer.set(name, value)
        else:
            answer = errors.Answer(self.status, list(self.headers), self.body)
        if self.retry_hint:
            # The group takes calls again only then: never advertise a shorter wait than that.
            hint = max(1, math.ceil(self.retry_hint))
            if self.retry_after() < hint:
                answer.set("Retry-After", str(hint))
        answer.set(ATTEMPTS_HEADER, str(attempts))
        return answer


def pause(attempt: int, settings: RouterSettings) -> float:
    """Seconds to wait before another attempt: a short jittered backoff, and at least the
    configured retry_after. (A deployment's own Retry-After, up to MAX_RETRY_AFTER, is waited
    for by the caller before that deployment is asked again.)"""
    wait: float = min(MAX_BACKOFF, BACKOFF * 2 ** (attempt - 1)) * (0.5 + random.random())
    return max(wait, settings.retry_after)
