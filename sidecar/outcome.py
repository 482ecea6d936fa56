"""What one request came to, as it goes: kept for the access log line and the metrics (record)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sidecar import requestid
from sidecar.accesslog import AccessLog
from sidecar.headers import REQUEST_ID_HEADER
from sidecar.http.message import Request, Responder
from sidecar.metrics import UNKNOWN, Metrics
from sidecar.routes import MODEL_ENDPOINTS, Endpoint

if TYPE_CHECKING:
    from sidecar.deployment import Deployment
    from sidecar.tracing import Trace


@dataclass(slots=True)
class Outcome:
    """What the access log and metrics learn of one request as it goes."""

    request_id: str = ""
    own_id: bool = True  # the request id was made here (the client sent none that we keep)
    # What each attempt sent upstream as X-Request-Id: a fresh id per attempt (the request's
    # own for the first when it was made here), since upstreams such as vLLM track requests by
    # it and two at once with one id collide. The client's id is kept end to end in the log.
    upstream_ids: list[str] = field(default_factory=list)
    key: str = ""  # the name of the caller's key
    tokens: int = 0  # the request's tokens: estimated, then as the upstream counted them
    model: str = UNKNOWN
    deployment: str = ""
    attempts: int = 0
    upstream_status: int | None = None
    ttfb: float | None = None  # seconds from the request's arrival to the upstream's reply head
    stream: bool = False
    started: float = 0.0  # time.perf_counter() when the request arrived
    cache: str | None = None  # hit, miss or bypass; None without a response cache
    cost: float | None = None  # USD, when the deployment has prices and the reply a usage
    # With tracing on only: the span's ids, and what the span says beyond the log line.
    trace: Trace | None = None
    asked: str = ""  # the model the client named
    upstream: Deployment | None = None  # the deployment of the last attempt
    usage: tuple[int, int] | None = None  # (input, output) tokens, as the upstream counted
    response_model: str | None = None

    @classmethod
    def of(cls, request: Request, started: float) -> Outcome:
        """A request's outcome as it arrives: its id, the client's or one made here."""
        given = request.headers.get(REQUEST_ID_HEADER)
        request_id = requestid.take(given)
        return cls(request_id, request_id != given, started=started)


# The endpoint label of the metrics, made once: an Enum's .name is Python code on every read.
LABELS: dict[Endpoint | None, str] = {e: e.name.lower() for e in Endpoint} | {None: "unknown"}


def record(
    metrics: Metrics,
    access_log: AccessLog,
    request: Request,
    endpoint: Endpoint | None,
    outcome: Outcome,
    status: int,
    reply: Responder,
) -> None:
    """Metrics and the access log line for one request (None: a path we do not serve)."""
    duration = time.perf_counter() - outcome.started
    name = LABELS[endpoint]
    metrics.done(name, outcome.model, outcome.deployment, status)
    if endpoint in MODEL_ENDPOINTS:
        metrics.duration.observe((name, outcome.model), duration)
    if outcome.cache is not None:
        metrics.cached(outcome.model, outcome.cache)
    if outcome.cost is not None:
        metrics.spend(outcome.key, outcome.model, outcome.cost)
    if not access_log.enabled:
        return
    ttfb = outcome.ttfb
    fields = {
        "request_id": outcome.request_id,
        "upstream_request_ids": outcome.upstream_ids or None,
        "key": outcome.key or None,
        "method": request.method,
        "path": request.path,
        "model": outcome.model or None,
        "deployment": outcome.deployment or None,
        "status": status,
        "upstream_status": outcome.upstream_status,
        "attempts": outcome.attempts,
        "duration_ms": round(duration * 1000, 3),
        "ttfb_ms": None if ttfb is None else round(ttfb * 1000, 3),
        "bytes": reply.sent if reply.started else None,
        "stream": outcome.stream,
    }
    if outcome.cache is not None:
        fields["cache"] = outcome.cache
    if outcome.cost is not None:
        fields["cost"] = outcome.cost
    access_log.record(fields)
