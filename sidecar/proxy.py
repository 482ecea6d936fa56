"""The request handler: body -> route -> deployment -> upstream -> pipe back."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

from sidecar import auth, errors, mock, pipe
from sidecar import request as requests
from sidecar.config import Config
from sidecar.deployment import Deployment
from sidecar.headers import DEPLOYMENT_HEADER, client_headers
from sidecar.metrics import UNKNOWN, Metrics
from sidecar.providers import translate
from sidecar.routes import MODEL_ENDPOINTS, Endpoint, RouteError, match, model_id
from sidecar.table import Table, pick
from sidecar.upstream import Pool, UpstreamError

log = logging.getLogger("sidecar")

CLIENT_GONE = 499
TEXT_TO_CHAT = translate.TextToChat()
_LIVE = orjson.dumps({"status": "ok"})
_READY = orjson.dumps({"status": "ready"})


@dataclass(frozen=True, slots=True)
class State:
    """Everything a request reads from the configuration; replaced whole on reload."""

    config: Config
    table: Table
    key_digest: bytes | None
    models_body: bytes
    created: int
    owners: dict[str, str]  # model group -> the provider of its first deployment

    @classmethod
    def of(cls, config: Config) -> State:
        table = Table(config.deployments)
        created = int(time.time())
        owners = {d.group: d.provider for d in reversed(config.deployments)}
        models = {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": owners[name]}
                for name in table.names
            ],
        }
        key = auth.digest(config.master_key) if config.master_key is not None else None
        return cls(config, table, key, orjson.dumps(models), created, owners)

    def model_object(self, model: str) -> bytes | None:
        found = self.table.lookup(model)
        if found is None:
            return None
        owner = self.owners[found.group.name]
        return orjson.dumps(
            {"id": model, "object": "model", "created": self.created, "owned_by": owner}
        )


@dataclass(slots=True)
class Outcome:
    """What the access log and metrics learn of one request as it goes."""

    model: str = UNKNOWN
    deployment: str = ""


class Gateway:
    def __init__(self, config: Config, pool: Pool, metrics: Metrics) -> None:
        self.pool = pool
        self.metrics = metrics
        self.draining = False
        self.reload(config)

    def reload(self, config: Config) -> None:
        """Swap the table; requests already running keep the State they started with."""
        if any(d.origin is not None and d.origin.tls for d in config.deployments):
            self.pool.tls_context()  # now, rather than on the first request
        self.state = State.of(config)

    async def handle(self, request: BaseRequest) -> web.StreamResponse:
        # The raw path: routes are plain ASCII, and decoding it into a URL object per request
        # costs more than the rest of routing.
        path = request.raw_path.partition("?")[0]
        try:
            endpoint = match(request.method, path)
        except RouteError as exc:
            if exc.status == 405:
                return errors.method_not_allowed(request.method, path, exc.allow).response()
            return errors.unknown_path(request.method, path).response()
        outcome = Outcome()
        status = 500
        self.metrics.in_flight += 1
        try:
            response = await self._dispatch(request, endpoint, outcome)
            status = response.status
            return response
        except errors.GatewayError as exc:
            status = exc.status
            return _failure(request, exc)
        except web.HTTPRequestEntityTooLarge:
            status = 413
            return _failure(request, errors.too_large(self.state.config.server.max_request_bytes))
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            # The client went away (499 is nginx's code for it); nobody is left to answer.
            status = CLIENT_GONE
            if isinstance(exc, asyncio.CancelledError):
                raise
            return web.Response(status=CLIENT_GONE)
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            return _failure(request, errors.internal())
        finally:
            self.metrics.in_flight -= 1
            self.metrics.done(endpoint.name.lower(), outcome.model, outcome.deployment, status)

    async def _dispatch(
        self, request: BaseRequest, endpoint: Endpoint, outcome: Outcome
    ) -> web.StreamResponse:
        state = self.state
        if endpoint in MODEL_ENDPOINTS:
            if not auth.allowed(request.headers, state.key_digest):
                raise errors.unauthorized()
            return await self._forward(request, endpoint, state, outcome)
        if endpoint is Endpoint.MODELS:
            if not auth.allowed(request.headers, state.key_digest):
                raise errors.unauthorized()
            return web.Response(body=state.models_body, content_type="application/json")
        if endpoint is Endpoint.MODEL:
            if not auth.allowed(request.headers, state.key_digest):
                raise errors.unauthorized()
            name = unquote(model_id(request.raw_path.partition("?")[0]))
            found = state.model_object(name)
            if found is None:
                raise errors.model_not_found(name)
            return web.Response(body=found, content_type="application/json")
        if endpoint is Endpoint.LIVELINESS:
            return web.Response(body=_LIVE, content_type="application/json")
        if endpoint is Endpoint.READINESS:
            if self.draining:
                raise errors.GatewayError(
                    503, "The gateway is shutting down.", errors.UNAVAILABLE, "draining"
                )
            return web.Response(body=_READY, content_type="application/json")
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _forward(
        self, request: BaseRequest, endpoint: Endpoint, state: State, outcome: Outcome
    ) -> web.StreamResponse:
        limit = state.config.server.max_request_bytes
        if limit and request.content_length is not None and request.content_length > limit:
            raise errors.too_large(limit)  # before reading a byte of it
        if request.headers.get("Expect", "").lower() == "100-continue":
            _continue(request)
        try:
            raw = await request.read()
        except HttpProcessingError:
            # Broken chunked framing or a short body; the exception's text may quote the bytes.
            raise errors.bad_request(
                "The request body could not be read: malformed framing.", code="malformed_request"
            ) from None
        body = requests.parse(raw, endpoint)
        model: str = body["model"]
        found = state.table.lookup(model)
        if found is None:
            raise errors.model_not_found(model)
        outcome.model = found.group.name
        deployment = pick(found.group)
        outcome.deployment = deployment.id
        upstream_model = deployment.upstream_model(found.wildcard)
        if deployment.mock_response is not None:
            return await _mock(request, endpoint, body, deployment, upstream_model)
        try:
            head = deployment.head(endpoint, upstream_model)
        except ValueError:
            raise errors.bad_request(
                f"The model name '{model}' cannot name a deployment of this upstream: use letters, "
                "digits, '.', '-' and '_'.",
                "model",
                "invalid_model_name",
            ) from None
        if head is None or deployment.origin is None:
            raise errors.bad_request(
                f"The model '{model}' does not serve {endpoint.value}.",
                "model",
                "unsupported_endpoint",
            )
        translation = None
        defaults = deployment.defaults[endpoint]
        if endpoint is Endpoint.CHAT:
            if not deployment.supports_system_message:
                body = {**body, "messages": translate.fold_system_messages(body["messages"])}
            if deployment.chat_over_text:
                body = translate.chat_to_text_request(body)
                defaults = deployment.defaults[Endpoint.COMPLETIONS]
                translation = TEXT_TO_CHAT
        payload = requests.upstream_body(body, upstream_model, defaults)
        data = (
            head,
            client_headers(request.headers),
            b"Content-Length: %d\r\n\r\n" % len(payload),
            payload,
        )
        try:
            exchange = await self.pool.request(
                deployment.origin, data, deployment.timeout, deployment.stream_timeout
            )
        except UpstreamError as exc:
            self.metrics.upstream_error(deployment.id, exc.kind)
            raise errors.upstream_failure(exc, deployment.id) from None
        try:
            return await pipe.relay(request, exchange, deployment.id, translation)
        finally:
            if exchange.error is not None:
                self.metrics.upstream_error(deployment.id, "mid_reply")


def _continue(request: BaseRequest) -> None:
    """Answer `Expect: 100-continue` (RFC 9110 10.1.1): the client waits for it before sending a
    large body. Reached only once the declared length passed the size check."""
    transport = request.transport
    if transport is not None and request.version >= (1, 1):
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _failure(request: BaseRequest, failure: errors.GatewayError) -> web.StreamResponse:
    """The error reply, or, when a reply has already begun, the end of the connection: a second
    status line inside a started body would corrupt it, so the client sees a cut reply instead."""
    if request.writer.output_size > 0:
        pipe.abort(request)
        return web.Response(status=failure.status)  # never sent: the connection is closing
    return failure.response()


async def _mock(
    request: BaseRequest,
    endpoint: Endpoint,
    body: dict[str, Any],
    deployment: Deployment,
    model: str,
) -> web.StreamResponse:
    if endpoint is Endpoint.EMBEDDINGS:
        raise errors.bad_request(
            f"The model '{body['model']}' answers with mock_response, which serves chat and text "
            "completions only.",
            "model",
            "unsupported_endpoint",
        )
    text = deployment.mock_response or ""
    headers = {DEPLOYMENT_HEADER: deployment.id}
    if body.get("stream"):
        return await pipe.send_events(request, mock.stream(body, endpoint, model, text), headers)
    return web.Response(
        body=mock.reply(body, endpoint, model, text),
        content_type="application/json",
        headers=headers,
    )
