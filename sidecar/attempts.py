"""Route and attempt: the group's deployments, then its fallbacks, until one answers.

One upstream call per attempt, each built for its deployment (outbound.build); a connection
failure, a timeout before the reply, a 429 or a 5xx moves on; the reply that stands is relayed
(pipe.relay) and what it cost is counted (usage, router, metrics).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

from sidecar import errors, mock, outbound, pipe, requestid, stream_usage, usage
from sidecar import request as requests
from sidecar.affinity import Affinity, FirstPart, response_id
from sidecar.deployment import Deployment
from sidecar.failover import MAX_RETRY_AFTER, Failure, pause
from sidecar.forms import Form
from sidecar.headers import (
    ATTEMPTS_HEADER,
    DEPLOYMENT_HEADER,
    IDENTITY,
    anthropic_headers,
    client_headers,
)
from sidecar.http.message import Responder
from sidecar.metrics import Metrics
from sidecar.origin import UpstreamError
from sidecar.outcome import Outcome
from sidecar.router import ERROR as ERROR_CAUSE
from sidecar.router import FAILED_ANSWER, Blocked, Router
from sidecar.router import RATE_LIMIT as RATE_LIMIT_CAUSE
from sidecar.routes import ANTHROPIC_ENDPOINTS, OPERATIONS, UNSPENT_ENDPOINTS, Endpoint
from sidecar.shared.link import RedisDown
from sidecar.shared.sync import Sync
from sidecar.state import State
from sidecar.table import Group, Match
from sidecar.upstream import Pool

log = logging.getLogger("sidecar")


class Attempts:
    """The routing stage: the router's choices, the pool's calls, the metrics of both."""

    def __init__(self, router: Router, pool: Pool, metrics: Metrics) -> None:
        self.router = router
        self.pool = pool
        self.metrics = metrics
        self.sync: Sync | None = None  # shared state; with sync_interval 0 Redis admits
        self.affinity = Affinity()  # on Redis too when the shared state is (server.start)

    async def run(
        self,
        reply: Responder,
        client: Mapping[str, str],
        endpoint: Endpoint,
        raw: bytes,
        body: dict[str, Any],
        found: Match,
        state: State,
        outcome: Outcome,
        form: Form | None = None,
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
        accept, encoding = client_headers(client)
        if endpoint in ANTHROPIC_ENDPOINTS:
            accept += anthropic_headers(client)
        pinned = None  # the deployment that made the response this request continues
        if endpoint is Endpoint.RESPONSES:
            if reply.tee is None:
                reply.tee = FirstPart()  # where the reply's response id is
            previous = body.get("previous_response_id")
            if isinstance(previous, str):
                pinned = await self.affinity.where(previous)
        elif endpoint is Endpoint.MESSAGES and body.get("stream") is True and reply.tee is None:
            reply.tee = FirstPart()  # its message_start event, where the input tokens are
        if reply.tee is not None:
            # The response cache keeps this reply for any client, whatever it accepts (and
            # a response's id must be read): it is asked for uncompressed, and sent so.
            encoding = IDENTITY
        outcome.stream = body.get("stream") is True
        ask_usage = stream_usage.to_ask(endpoint, body)
        if ask_usage:
            # The usage chunk is taken out of the bytes as they pass: they must be plain.
            encoding = IDENTITY
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
                deployment = None
                if pinned is not None:
                    deployment = _pinned(router, group, pinned, tried)
                if deployment is None:
                    deployment = router.choose(group, tried) or router.choose(group, spent)
                if deployment is None:
                    blocked = router.blocked(group)
                    if last is None:
                        last = Failure.of_block(blocked, group.name)
                    else:
                        last.retry_hint = blocked.retry_after  # what went wrong, and a wait
                    break
                if endpoint not in deployment.endpoints:
                    # It does not serve this endpoint (supported_endpoints, or its provider).
                    tried.add(deployment.id)
                    spent.add(deployment.id)
                    continue
                if budget is None:
                    retries = deployment.max_retries
                    budget = 1 + (settings.num_retries if retries is None else retries)
                if budget == 0:
                    break
                if outcome.attempts:
                    self.metrics.retry(group.name)
                    wait = pause(outcome.attempts, settings)
                    if retry_at and deployment.id in retry_at:
                        # Its own Retry-After, from an earlier attempt of this request.
                        wait = max(wait, retry_at[deployment.id] - time.perf_counter())
                    await asyncio.sleep(wait)
                if self.sync is not None and self.sync.ledger.exact and _limited(deployment):
                    # Just before the call: an admission counts in Redis at once.
                    refused = await self._admit_exact(self.sync, deployment, tokens, settings)
                    if refused is not None:
                        tried.add(deployment.id)
                        spent.add(deployment.id)
                        if last is None or (last.error is not None and last.error.status == 429):
                            last = Failure.of_block(Blocked(429, refused), group.name)
                        continue
                budget -= 1
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
                taken = accept + b"X-Request-Id: %s\r\n" % upstream_id.encode()
                if outcome.trace is not None:
                    taken += outcome.trace.header()
                    outcome.upstream = deployment
                # An operator's own stream_options (litellm_params) are kept as they are.
                strip = (
                    ask_usage
                    and deployment.stream_usage
                    and "stream_options" not in deployment.defaults[endpoint]
                )
                data, translation = outbound.build(
                    deployment,
                    endpoint,
                    stream_usage.asking(body) if strip else body,
                    link.wildcard,
                    taken,
                    encoding,
                    form,
                )
                if form is None:
                    # Per attempt: a deployment's own translation may keep what another dropped.
                    requests.check_integers(raw, cast(bytes, data[-1]))
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
                    await pipe.relay(
                        reply,
                        exchange,
                        named,
                        translation,
                        deployment.secrets,
                        None if endpoint in UNSPENT_ENDPOINTS else deployment.prices,
                        strip,
                    )
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
                    elif status < 400 and endpoint not in UNSPENT_ENDPOINTS:
                        if streaming and exchange.first_at:
                            self.metrics.genai_first_token.observe(
                                (OPERATIONS[endpoint], group.name),
                                exchange.first_at - outcome.started,
                            )
                        if endpoint is Endpoint.RESPONSES:
                            made = response_id(reply.tee)
                            if made is not None:
                                self.affinity.remember(made, deployment.id)
                        counted = usage.tokens(exchange.before_last, exchange.last)
                        if counted is not None and not counted[0] and endpoint is Endpoint.MESSAGES:
                            head = b"".join(reply.tee.parts or ()) if reply.tee else b""
                            counted = (usage.input_tokens(head) or 0, counted[1])
                        if outcome.trace is not None:
                            outcome.usage = counted
                            outcome.response_model = usage.response_model(
                                exchange.before_last, exchange.last
                            )
                        if counted is not None:
                            if deployment.prices is not None:
                                outcome.cost = deployment.prices.cost(*counted)
                            self.metrics.usage(group.name, *counted, OPERATIONS[endpoint])
                            router.used(deployment, sum(counted) - tokens)
                            outcome.tokens = sum(counted)
        assert last is not None
        reply.send_answer(last.answer(outcome.attempts, endpoint in ANTHROPIC_ENDPOINTS))

    async def _admit_exact(
        self, sync: Sync, deployment: Deployment, tokens: int, settings: Any
    ) -> float | None:
        """sync_interval 0: Redis admits against the deployment's rpm/tpm, exactly. The
        seconds until it may take a request when it refuses; None when admitted, or when
        Redis is away (the router's local view chose it: that is the fallback)."""
        if not settings.enable_pre_call_checks:
            return None
        try:
            refused = await sync.admit(
                f"deployment:{deployment.id}", deployment.rpm, deployment.tpm, tokens
            )
        except RedisDown:
            return None
        return None if refused is None else refused[0]

    def _failed(self, deployment: Deployment, cause: str, group: Group) -> None:
        if self.router.failed(deployment, cause, len(group.deployments)):
            self.metrics.cooldown(deployment.id)
            log.warning("deployment %s cools down after repeated failures", deployment.id)


def _pinned(router: Router, group: Group, wanted: str, tried: set[str]) -> Deployment | None:
    """The deployment `wanted` when it is of this group, untried and available."""
    for d in group.deployments:
        if d.id == wanted and d.id not in tried and router.available(d, router.clock()):
            return d
    return None


def _limited(d: Deployment) -> bool:
    return d.rpm is not None or d.tpm is not None


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
    if reply.tee is not None:
        reply.tee.content_type = "application/json"
    reply.send(200, fields, mock.reply(body, endpoint, model, text))
