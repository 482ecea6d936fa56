"""The request handler: body -> route -> deployment -> upstream -> pipe back."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from sidecar import auth, errors, mock, outbound, pipe, requestid, usage
from sidecar import request as requests
from sidecar.accesslog import AccessLog
from sidecar.config import Config
from sidecar.deployment import Deployment
from sidecar.failover import MAX_RETRY_AFTER, Failure, pause
from sidecar.headers import (
    ATTEMPTS_HEADER,
    DEPLOYMENT_HEADER,
    REQUEST_ID_HEADER,
    client_headers,
)
from sidecar.http.message import Request, Responder
from sidecar.limits import KeyLimits
from sidecar.metrics import UNKNOWN, Metrics
from sidecar.origin import UpstreamError
from sidecar.router import ERROR as ERROR_CAUSE
from sidecar.router import FAILED_ANSWER, Router
from sidecar.router import RATE_LIMIT as RATE_LIMIT_CAUSE
from sidecar.routes import MODEL_ENDPOINTS, Endpoint, RouteError, match, model_id
from sidecar.table import Group, Match, Table
from sidecar.upstream import Pool

log = logging.getLogger("sidecar")

KEYED = MODEL_ENDPOINTS | {Endpoint.MODELS, Endpoint.MODEL}  # behind the keys, when there are

CLIENT_GONE = 499
# What the admin listener serves: health and metrics, for probes and scrapers that need no key.
ADMIN_ENDPOINTS = frozenset({Endpoint.LIVELINESS, Endpoint.READINESS, Endpoint.METRICS})
_LIVE = orjson.dumps({"status": "ok"})
_READY = orjson.dumps({"status": "ready"})
JSON = (("Content-Type", "application/json"),)
TEXT = (("Content-Type", "text/plain; charset=utf-8"),)


@dataclass(frozen=True, slots=True)
class State:
    """Everything a request reads from the configuration; replaced whole on reload."""

    config: Config
    table: Table
    keys: auth.KeyRing
    models_body: bytes
    created: int
    owners: dict[str, str]  # model group -> the provider of its first deployment

    @classmethod
    def of(cls, config: Config) -> State:
        table = Table(config.deployments)
        created = int(time.time())
        owners = {d.group: d.provider for d in reversed(config.deployments)}
        models = _listing(table.names, created, owners)
        return cls(config, table, auth.KeyRing(config.keys), models, created, owners)

    def models_for(self, key: auth.ClientKey) -> bytes:
        """GET /v1/models as this key sees it: only what it may use."""
        if key.models is None:
            return self.models_body
        names = (n for n in self.table.names if key.allows(n))
        return _listing(names, self.created, self.owners)

    def fallback_names(self, group: str) -> tuple[str, ...]:
        """The groups to try, in order, once `group` is exhausted."""
        router = self.config.router
        names = router.fallbacks.get(group, router.default_fallbacks)
        if not names:
            return ()
        return tuple(name for name in names if name != group)

    def fallbacks(self, names: tuple[str, ...]) -> Iterator[Match]:
        for name in names:
            found = self.table.lookup(name)
            if found is not None:
                yield found

    def model_object(self, model: str) -> bytes | None:
        found = self.table.lookup(model)
        if found is None:
            return None
        return orjson.dumps(_model(model, self.created, self.owners[found.group.name]))


def _model(name: str, created: int, owner: str) -> dict[str, Any]:
    """One model as GET /v1/models shows it, in the OpenAI API's shape."""
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


def _listing(names: Iterable[str], created: int, owners: dict[str, str]) -> bytes:
    data = [_model(name, created, owners[name]) for name in names]
    return orjson.dumps({"object": "list", "data": data})


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

    @classmethod
    def of(cls, request: Request, started: float) -> Outcome:
        """A request's outcome as it arrives: its id, the client's or one made here."""
        given = request.headers.get(REQUEST_ID_HEADER)
        request_id = requestid.take(given)
        return cls(request_id, request_id != given, started=started)


class Gateway:
    def __init__(
        self, config: Config, pool: Pool, metrics: Metrics, access_log: AccessLog | None = None
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.access_log = access_log or AccessLog(enabled=False)
        self.draining = False
        self.router = Router(config.router)
        self.limits = KeyLimits()
        self.reload(config)

    def reload(self, config: Config) -> None:
        """Swap the table; requests already running keep the State they started with."""
        if any(d.origin is not None and d.origin.tls for d in config.deployments):
            self.pool.tls_context()  # now, rather than on the first request
        self.router.settings = config.router  # what it learnt of each deployment stays
        self.state = State.of(config)

    async def handle(self, request: Request, reply: Responder) -> None:
        # The raw path: routes are plain ASCII, and decoding it into a URL object per request
        # costs more than the rest of routing.
        path = request.path
        started = time.perf_counter()  # uvloop's loop.time() counts whole milliseconds
        outcome = Outcome.of(request, started)
        reply.always = ((REQUEST_ID_HEADER, outcome.request_id),)
        try:
            endpoint = match(request.method, path)
        except RouteError as exc:
            if exc.status == 405:
                failure = errors.method_not_allowed(request.method, path, exc.allow)
            else:
                failure = errors.unknown_path(request.method, path)
            self._refuse(request, reply, outcome, failure)
            return
        status = 500
        self.metrics.in_flight += 1
        try:
            await self._dispatch(request, reply, endpoint, outcome)
        except errors.GatewayError as exc:
            _failure(reply, exc)
        except asyncio.CancelledError:
            # The client went away (499 is nginx's code for it); nobody is left to answer.
            status = CLIENT_GONE
            raise
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, path)
            _failure(reply, errors.internal())
        finally:
            self.metrics.in_flight -= 1
            if status != CLIENT_GONE:
                status = reply.status or 500
            self._record(request, path, endpoint, outcome, status, reply, started)

    async def handle_admin(self, request: Request, reply: Responder) -> None:
        """The admin listener: health and metrics as on the API's listener; nothing else."""
        await self._ops_only(request, reply, errors.unknown_path)

    async def handle_over_limit(self, request: Request, reply: Responder) -> None:
        """A connection past max_connections: health and metrics are still answered, so that
        a busy pod passes its probes; anything else gets 503. Either way it is then closed."""
        reply.keep_alive = False
        await self._ops_only(request, reply, lambda m, p: errors.too_many_connections())

    async def _ops_only(
        self,
        request: Request,
        reply: Responder,
        refusal: Callable[[str, str], errors.GatewayError],
    ) -> None:
        path = request.path
        try:
            endpoint: Endpoint | None = match(request.method, path)
        except RouteError:
            endpoint = None
        if endpoint in ADMIN_ENDPOINTS:
            await self.handle(request, reply)
            return
        outcome = Outcome.of(request, time.perf_counter())
        reply.always = ((REQUEST_ID_HEADER, outcome.request_id),)
        self._refuse(request, reply, outcome, refusal(request.method, path))

    def _refuse(
        self, request: Request, reply: Responder, outcome: Outcome, failure: errors.GatewayError
    ) -> None:
        """The answer to a path this listener does not serve, logged and counted."""
        reply.send_answer(failure.answer())
        self._record(request, request.path, None, outcome, failure.status, reply, outcome.started)

    def _record(
        self,
        request: Request,
        path: str,
        endpoint: Endpoint | None,
        outcome: Outcome,
        status: int,
        reply: Responder,
        started: float,
    ) -> None:
        """Metrics and the access log line for one request (None: a path we do not serve)."""
        duration = time.perf_counter() - started
        name = endpoint.name.lower() if endpoint is not None else "unknown"
        self.metrics.done(name, outcome.model, outcome.deployment, status)
        if endpoint in MODEL_ENDPOINTS:
            self.metrics.duration.observe((name, outcome.model), duration)
        if not self.access_log.enabled:
            return
        ttfb = outcome.ttfb
        self.access_log.record(
            {
                "request_id": outcome.request_id,
                "upstream_request_ids": outcome.upstream_ids or None,
                "key": outcome.key or None,
                "method": request.method,
                "path": path,
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
        )

    async def _dispatch(
        self, request: Request, reply: Responder, endpoint: Endpoint, outcome: Outcome
    ) -> None:
        state = self.state
        if endpoint in KEYED:
            key = state.keys.identify(request.headers)
            if key is None:
                raise errors.unauthorized()
            outcome.key = key.name
            if endpoint in MODEL_ENDPOINTS:
                await self._forward(request, reply, endpoint, state, outcome, key)
                return
            if endpoint is Endpoint.MODELS:
                reply.send(200, JSON, state.models_for(key))
                return
            name = unquote(model_id(request.path))
            found = state.model_object(name) if key.allows(name) else None
            if found is None:
                raise errors.model_not_found(name)
            reply.send(200, JSON, found)
        elif endpoint is Endpoint.LIVELINESS:
            reply.send(200, JSON, _LIVE)
        elif endpoint is Endpoint.READINESS:
            if self.draining:
                raise errors.GatewayError(
                    503, "The gateway is shutting down.", errors.UNAVAILABLE, "draining"
                )
            reply.send(200, JSON, _READY)
        else:
            reply.send(200, TEXT, self.metrics.render())

    async def _forward(
        self,
        request: Request,
        reply: Responder,
        endpoint: Endpoint,
        state: State,
        outcome: Outcome,
        key: auth.ClientKey,
    ) -> None:
        # The body's limit, timeout and encoding were the server protocol's: it is here whole.
        raw = request.body
        body = requests.parse(raw, endpoint)
        model: str = body["model"]
        found = state.table.lookup(model)
        if found is None:
            raise errors.model_not_found(model)
        if not key.allows(model):
            raise errors.model_not_allowed(model, key.name)
        outcome.model = found.group.name
        busy = state.config.server.max_in_flight
        if busy and self.metrics.in_flight > busy:
            raise errors.GatewayError(
                503,
                "The gateway is serving as many requests as it may; retry shortly.",
                errors.UNAVAILABLE,
                "overloaded",
                headers={"Retry-After": "1"},
            )
        estimate = len(raw) // 4  # tokens, until the reply's usage says
        self.limits.admit(key, estimate)
        outcome.tokens = estimate
        try:
            await self._attempts(request, reply, endpoint, raw, body, found, state, outcome)
        finally:
            self.limits.used(key, outcome.tokens - estimate)

    async def _attempts(
        self,
        request: Request,
        reply: Responder,
        endpoint: Endpoint,
        raw: bytes,
        body: dict[str, Any],
        found: Match,
        state: State,
        outcome: Outcome,
    ) -> None:
        """Try the group's deployments, then its fallback groups, until one answers.

        A connection failure, a timeout before the reply, a 429 or a 5xx moves on to another
        deployment (or the same one, when it is alone) after a short jittered pause, as long
        as the group's retries last; then the next fallback group gets its own. Nothing is
        retried once a byte of the reply has gone to the client.
        """
        router = self.router
        settings = state.config.router
        tokens = outcome.tokens  # the estimate, until the reply's usage says
        # Fallback groups are looked up only once the first group is spent.
        fallback_names = state.fallback_names(found.group.name)
        chain = itertools.chain((found,), state.fallbacks(fallback_names))
        accept, encoding = client_headers(request.headers)
        outcome.stream = body.get("stream") is True
        last: Failure | None = None
        retry_at: dict[str, float] = {}  # deployment -> when its Retry-After ends
        for position, link in enumerate(chain):
            group = link.group
            if position:
                self.metrics.fallback(found.group.name, group.name)
            tried: set[str] = set()
            spent: set[str] = set()  # asked to wait longer than we would: not asked again
            budget: int | None = None
            while True:
                deployment = router.choose(group, tried) or router.choose(group, spent)
                if deployment is None:
                    blocked = router.blocked(group)
                    if last is None:
                        last = Failure.of_block(blocked, group.name)
                    else:
                        last.retry_hint = blocked.retry_after  # what went wrong, and a wait
                    break
                if budget is None:
                    retries = deployment.max_retries
                    budget = 1 + (settings.num_retries if retries is None else retries)
                if budget == 0:
                    break
                budget -= 1
                if outcome.attempts:
                    self.metrics.retry(group.name)
                    wait = pause(outcome.attempts, settings)
                    if retry_at and deployment.id in retry_at:
                        # Its own Retry-After, from an earlier attempt of this request.
                        wait = max(wait, retry_at[deployment.id] - time.perf_counter())
                    await asyncio.sleep(wait)
                outcome.attempts += 1
                outcome.deployment = deployment.id
                upstream_model = deployment.upstream_model(link.wildcard)
                if deployment.mock_response is not None:
                    await _mock(reply, endpoint, body, deployment, upstream_model, outcome)
                    return
                if outcome.own_id and outcome.attempts == 1:
                    upstream_id = outcome.request_id
                else:
                    upstream_id = requestid.make()
                outcome.upstream_ids.append(upstream_id)
                client = accept + b"X-Request-Id: %s\r\n" % upstream_id.encode()
                data, translation = outbound.build(
                    deployment, endpoint, body, link.wildcard, client, encoding
                )
                # Per attempt: a deployment's own translation may keep what another dropped.
                requests.check_integers(raw, data[-1])
                assert deployment.origin is not None
                named = {DEPLOYMENT_HEADER: deployment.id, ATTEMPTS_HEADER: str(outcome.attempts)}
                router.started(deployment, tokens)
                sent = time.perf_counter()
                try:
                    exchange = await self.pool.request(
                        deployment.origin, data, deployment.timeout, deployment.stream_timeout
                    )
                except UpstreamError as exc:
                    router.finished(deployment)
                    router.answered(deployment, FAILED_ANSWER)
                    self.metrics.upstream_error(deployment.id, exc.kind)
                    self._failed(deployment, ERROR_CAUSE, group)
                    last = Failure(errors.upstream_failure(exc, deployment.id))
                    tried.add(deployment.id)
                    continue
                except BaseException:  # the client left while we waited: not the upstream's fault
                    router.finished(deployment)
                    raise
                answered = time.perf_counter()
                # A fast error is no reason to prefer a deployment: it counts as a slow answer.
                router.answered(
                    deployment, answered - sent if exchange.status < 400 else FAILED_ANSWER
                )
                self.metrics.ttfb.observe((deployment.id,), answered - sent)
                outcome.ttfb = answered - outcome.started
                status = outcome.upstream_status = exchange.status
                if status == 429 or status >= 500:
                    self.metrics.upstream_error(deployment.id, f"status_{status}")
                    self._failed(
                        deployment, RATE_LIMIT_CAUSE if status == 429 else ERROR_CAUSE, group
                    )
                more = budget > 0 or position < len(fallback_names)
                if (status == 429 or status >= 500) and more:
                    try:
                        error_body = await exchange.read_all(errors.MAX_ERROR_BODY + 1)
                    except UpstreamError:
                        error_body = b""
                    finally:
                        exchange.close()
                        router.finished(deployment)
                    last = Failure.of_reply(exchange, error_body, named, deployment.secrets)
                    tried.add(deployment.id)
                    asked = last.retry_after()
                    if asked > MAX_RETRY_AFTER:
                        spent.add(deployment.id)
                    elif asked:
                        retry_at[deployment.id] = time.perf_counter() + asked
                    continue
                streaming = outcome.stream and status < 400
                self.metrics.streams_in_flight += streaming
                try:
                    await pipe.relay(reply, exchange, named, translation, deployment.secrets)
                    return
                except errors.GatewayError as exc:
                    exc.headers = {**(exc.headers or {}), ATTEMPTS_HEADER: str(outcome.attempts)}
                    raise
                finally:
                    self.metrics.streams_in_flight -= streaming
                    router.finished(deployment)
                    if exchange.error is not None:
                        kind = exchange.error.kind
                        self.metrics.upstream_error(
                            deployment.id, kind if kind == "timeout" else "mid_reply"
                        )
                    elif status < 400:
                        counted = usage.tokens(exchange.before_last, exchange.last)
                        if counted is not None:
                            self.metrics.usage(group.name, *counted)
                            router.used(deployment, sum(counted) - tokens)
                            outcome.tokens = sum(counted)
        assert last is not None
        reply.send_answer(last.answer(outcome.attempts))

    def _failed(self, deployment: Deployment, cause: str, group: Group) -> None:
        if self.router.failed(deployment, cause, len(group.deployments)):
            self.metrics.cooldown(deployment.id)
            log.warning("deployment %s cools down after repeated failures", deployment.id)


def _failure(reply: Responder, failure: errors.GatewayError) -> None:
    """The error reply, or, when a reply has already begun, the end of the connection: a second
    status line inside a started body would corrupt it, so the client sees a cut reply instead."""
    if reply.started:
        reply.abort()
    else:
        reply.send_answer(failure.answer())


async def _mock(
    reply: Responder,
    endpoint: Endpoint,
    body: dict[str, Any],
    deployment: Deployment,
    model: str,
    outcome: Outcome,
) -> None:
    if endpoint is Endpoint.EMBEDDINGS:
        raise errors.bad_request(
            f"The model '{body['model']}' answers with mock_response, which serves chat and text "
            "completions only.",
            "model",
            "unsupported_endpoint",
        )
    text = deployment.mock_response or ""
    headers = {DEPLOYMENT_HEADER: deployment.id, ATTEMPTS_HEADER: str(outcome.attempts)}
    if body.get("stream"):
        await pipe.send_events(reply, mock.stream(body, endpoint, model, text), headers)
        return
    fields = [("Content-Type", "application/json"), *headers.items()]
    reply.send(200, fields, mock.reply(body, endpoint, model, text))
