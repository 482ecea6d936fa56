"""The request handler, as a pipeline that reads top to bottom: match the path, authenticate,
parse and admit, route and attempt (attempts.py), relay (pipe.py), record (outcome.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from sidecar import auth, errors, forms
from sidecar import request as requests
from sidecar.accesslog import AccessLog
from sidecar.attempts import Attempts
from sidecar.budgets import Budgets
from sidecar.cache.cache import Cache
from sidecar.config import Config
from sidecar.headers import REQUEST_ID_HEADER
from sidecar.http.message import Request, Responder
from sidecar.limits import KeyLimits
from sidecar.metrics import Metrics
from sidecar.outcome import Outcome, record
from sidecar.router import Router
from sidecar.routes import (
    ANTHROPIC_ENDPOINTS,
    FORM_ENDPOINTS,
    MODEL_ENDPOINTS,
    ROUTES,
    UNSPENT_ENDPOINTS,
    Endpoint,
    RouteError,
    match,
    model_id,
)
from sidecar.shared.ledger import Ledger
from sidecar.shared.sync import Sync
from sidecar.state import State
from sidecar.upstream import Pool

if TYPE_CHECKING:
    from sidecar.tracing import Tracing

log = logging.getLogger("sidecar")

KEYED = MODEL_ENDPOINTS | {Endpoint.MODELS, Endpoint.MODEL}  # behind the keys, when there are

CLIENT_GONE = 499
# What the admin listener serves: health and metrics, for probes and scrapers that need no key.
ADMIN_ENDPOINTS = frozenset({Endpoint.LIVELINESS, Endpoint.READINESS, Endpoint.METRICS})
_LIVE = orjson.dumps({"status": "ok"})
_READY = orjson.dumps({"status": "ready"})
JSON = (("Content-Type", "application/json"),)
TEXT = (("Content-Type", "text/plain; charset=utf-8"),)


class Gateway:
    def __init__(
        self,
        config: Config,
        pool: Pool,
        metrics: Metrics,
        access_log: AccessLog | None = None,
        shared: Ledger | None = None,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.access_log = access_log or AccessLog(enabled=False)
        self.draining = False
        self.router = Router(config.router)
        self.limits = KeyLimits()
        self.budgets = Budgets()
        self.tracing: Tracing | None = None  # OpenTelemetry, when configured (server.start)
        metrics.budgets = self.budgets
        self.router.shared = self.limits.shared = self.budgets.shared = shared
        self.sync: Sync | None = None  # shared state's sync, once started (server.start)
        self.cache: Cache | None = None  # the response cache, when configured (server.start)
        self.attempts = Attempts(self.router, pool, metrics)
        self.watched: tuple[str, ...] = ()
        self.reload(config)

    def reload(self, config: Config) -> None:
        """Swap the table; requests already running keep the State they started with."""
        if any(d.origin is not None and d.origin.tls for d in config.deployments):
            self.pool.tls_context()  # now, rather than on the first request
        self.router.settings = config.router  # what it learnt of each deployment stays
        self.state = State.of(config)
        self.budgets.watch(config.keys)
        if self.limits.shared is not None:
            self._share(config)

    def _share(self, config: Config) -> None:
        """Make the shared counters of this table known to the sync before any request needs
        them, so that the first admissions already see the other instances' counts."""
        for key in config.keys:
            if key.rpm is not None or key.tpm is not None:
                self.limits.window(key)
        if config.router.enable_pre_call_checks:
            for d in config.deployments:
                if d.rpm is not None or d.tpm is not None:
                    self.router.share(d)
        # Cooldowns happen only in groups of two or more (router.failed): those are shared.
        sizes: dict[str, int] = {}
        for d in config.deployments:
            sizes[d.group] = sizes.get(d.group, 0) + 1
        self.watched = tuple(d.id for d in config.deployments if sizes[d.group] > 1)

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
        if self.tracing is not None and endpoint in MODEL_ENDPOINTS:
            outcome.trace = self.tracing.begin(request.headers)
        status = 500
        self.metrics.in_flight += 1
        try:
            await self._dispatch(request, reply, endpoint, outcome)
        except errors.GatewayError as exc:
            _failure(reply, exc, endpoint in ANTHROPIC_ENDPOINTS)
        except asyncio.CancelledError:
            # The client went away (499 is nginx's code for it); nobody is left to answer.
            status = CLIENT_GONE
            raise
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, path)
            _failure(reply, errors.internal(), endpoint in ANTHROPIC_ENDPOINTS)
        finally:
            self.metrics.in_flight -= 1
            if status != CLIENT_GONE:
                status = reply.status or 500
            record(self.metrics, self.access_log, request, endpoint, outcome, status, reply)
            if outcome.trace is not None:
                assert self.tracing is not None
                self.tracing.record(endpoint, outcome, status)

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
        """The answer to a path this listener does not serve, logged and counted (a wrong
        method on an Anthropic path in Anthropic's shape)."""
        reply.send_answer(refusal_answer(request.path, failure))
        record(self.metrics, self.access_log, request, None, outcome, failure.status, reply)

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
        elif self.metrics.enabled:
            reply.send(200, TEXT, self.metrics.render())
        else:
            raise errors.GatewayError(
                404,
                "Metrics are switched off on this gateway (sidecar_settings.metrics: false).",
                errors.INVALID_REQUEST,
                "metrics_off",
            )

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
        form = None
        if endpoint in FORM_ENDPOINTS:
            form = forms.parse(raw, request.headers.get("content-type"))
            body: dict[str, Any] = {**form.fields, "stream": form.fields.get("stream") == "true"}
        else:
            body = requests.parse(raw, endpoint)
        model: str = body["model"]
        if outcome.trace is not None:
            outcome.asked = model
        found = state.table.lookup(model)
        if found is None:
            raise errors.model_not_found(model)
        if not key.allows(model):
            raise errors.model_not_allowed(model, key.name)
        if endpoint not in found.group.serves:
            raise errors.unsupported_endpoint(model, request.path)
        if key.max_budget is not None:
            self.budgets.check(key)
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
        # Tokens, until the reply's usage says (a form is mostly its file; counting tokens
        # spends none): no estimate for those.
        estimate = 0 if form is not None or endpoint in UNSPENT_ENDPOINTS else len(raw) // 4
        controls = body.pop("cache", None)  # LiteLLM's per-request cache controls: ours alone
        cache = self.cache
        use = entry = None
        if cache is not None:
            use = cache.use(endpoint, found.group.name, key, body, controls, request.headers)
            local = cache.local
            entry = cache.found(use, local) if local is not None else await cache.lookup(use)
        if entry is not None:
            # A hit counts toward the key's rpm, never its tpm: it spends no tokens.
            assert cache is not None
            await self._admit(key, 0, tpm=False)
            await cache.hit(entry, reply, outcome)
            return
        await self._admit(key, estimate)
        if cache is not None:
            cache.missed(use, reply, outcome)
        outcome.tokens = estimate
        try:
            await self.attempts.run(
                reply, request.headers, endpoint, raw, body, found, state, outcome, form
            )
        finally:
            self.limits.used(key, outcome.tokens - estimate)
            if outcome.cost is not None and key.max_budget is not None:
                self.budgets.spend(key, outcome.cost)
        if use is not None and cache is not None:
            cache.kept(use, reply)

    async def _admit(self, key: auth.ClientKey, tokens: int, tpm: bool = True) -> None:
        sync = self.sync
        if sync is not None and sync.ledger.exact:
            await self.limits.admit_exactly(sync, key, tokens, tpm)
        else:
            self.limits.admit(key, tokens, tpm)


def refusal_answer(path: str, failure: errors.GatewayError) -> errors.Answer:
    """A refusal of the HTTP layer (413, 431, 408 ...), in Anthropic's shape on its paths."""
    route = ROUTES.get(path)
    return failure.answer(route is not None and route.endpoint in ANTHROPIC_ENDPOINTS)


def _failure(reply: Responder, failure: errors.GatewayError, anthropic: bool) -> None:
    """The error reply (in Anthropic's shape on its paths), or, when a reply has already
    begun, the end of the connection: a second status line inside a started body would corrupt
    it, so the client sees a cut reply instead."""
    if reply.started:
        reply.abort()
    else:
        reply.send_answer(failure.answer(anthropic))
