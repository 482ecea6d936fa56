"""The one mapping from failures to OpenAI-shaped error replies.

Every error the sidecar produces itself is the OpenAI API's ErrorResponse:
{"error": {"message": ..., "type": ..., "param": ..., "code": ...}} with a fitting status.
Messages never contain a key: callers pass only names and public facts.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from sidecar.headers import DEPLOYMENT_HEADER, is_json
from sidecar.origin import UpstreamError
from sidecar.redact import redact

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
UPSTREAM = "upstream_error"
SERVER = "server_error"
UNAVAILABLE = "service_unavailable"


@dataclass(slots=True)
class Answer:
    """A reply as plain data, for the edge to write: status, header fields in order, body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def set(self, name: str, value: str) -> None:
        """One field of that name, with this value, in place of any before."""
        low = name.lower()
        self.headers = [h for h in self.headers if h[0].lower() != low]
        self.headers.append((name, value))


class GatewayError(Exception):
    """A failure that has an HTTP status and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers

    def body(self, anthropic: bool = False) -> bytes:
        if anthropic:
            kind = ANTHROPIC_TYPES.get(self.status) or (
                "invalid_request_error" if self.status < 500 else "api_error"
            )
            return orjson.dumps({"type": "error", "error": {"type": kind, "message": self.message}})
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})

    def answer(self, anthropic: bool = False) -> Answer:
        """`anthropic`: in the shape of Anthropic's API, for the clients of /v1/messages."""
        headers = [("Content-Type", "application/json"), *(self.headers or {}).items()]
        return Answer(self.status, headers, self.body(anthropic))


# Anthropic's error types by status (its API's "Errors" page); any other 4xx is an
# invalid_request_error, any other 5xx an api_error.
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, INVALID_REQUEST, code, param)


def unauthorized() -> GatewayError:
    return GatewayError(
        401,
        "Missing or invalid API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>').",
        AUTHENTICATION,
        "invalid_api_key",
    )


def model_not_allowed(model: str, key: str) -> GatewayError:
    return GatewayError(
        403,
        f"The key '{key}' may not use the model '{model}'.",
        PERMISSION,
        "model_not_allowed",
        "model",
    )


def rate_limited(key: str, what: str, retry_after: float) -> GatewayError:
    wait = max(1, math.ceil(retry_after))
    return GatewayError(
        429,
        f"The key '{key}' is over its {what} limit; retry in {wait}s.",
        RATE_LIMIT,
        "rate_limit_exceeded",
        headers={"Retry-After": str(wait)},
    )


def budget_exceeded(key: str, spent: float, budget: float, resets_in: float | None) -> GatewayError:
    """The key spent its max_budget: refused until its period resets (never, without one)."""
    when = "" if resets_in is None else f"; it resets in {max(1, math.ceil(resets_in))}s"
    return GatewayError(
        429,
        f"The key '{key}' has spent {spent:.6g} USD of its budget of {budget:.6g} USD{when}.",
        RATE_LIMIT,
        "budget_exceeded",
        headers=None if resets_in is None else {"Retry-After": str(max(1, math.ceil(resets_in)))},
    )


def shared_state_down() -> GatewayError:
    """on_redis_down: deny, while Redis is away: a shared limit cannot be counted."""
    return GatewayError(
        503,
        "The gateway cannot reach the shared state its limits are counted in; retry shortly.",
        UNAVAILABLE,
        "shared_state_unavailable",
        headers={"Retry-After": "1"},
    )


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model}' does not exist on this gateway; GET /v1/models lists the models.",
        INVALID_REQUEST,
        "model_not_found",
        "model",
    )


def unsupported_endpoint(model: str, path: str) -> GatewayError:
    """A group none of whose deployments serves the path (model_info.supported_endpoints, or a
    provider that has no such endpoint)."""
    return GatewayError(
        404,
        f"The model '{model}' does not serve {path} on this gateway.",
        INVALID_REQUEST,
        "unsupported_endpoint",
        "model",
    )


def unknown_path(method: str, path: str) -> GatewayError:
    return GatewayError(404, f"Invalid URL ({method} {path})", INVALID_REQUEST, "unknown_url")


def method_not_allowed(method: str, path: str, allow: frozenset[str]) -> GatewayError:
    return GatewayError(
        405,
        f"Method {method} is not allowed on {path}; allowed: {', '.join(sorted(allow))}.",
        INVALID_REQUEST,
        "method_not_allowed",
        headers={"Allow": ", ".join(sorted(allow))},
    )


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"Request body is larger than this gateway's limit of {limit} bytes.",
        INVALID_REQUEST,
        "request_too_large",
    )


def upstream_failure(exc: UpstreamError, deployment: str) -> GatewayError:
    """A failure reaching the upstream or reading its reply, before any byte went to the client."""
    named = {DEPLOYMENT_HEADER: deployment}
    if exc.kind == "timeout":
        return GatewayError(
            504,
            f"Upstream '{deployment}' did not answer in time.",
            UPSTREAM,
            "upstream_timeout",
            headers=named,
        )
    reason = {
        "connect": "connection refused or unreachable",
        "tls": "the TLS handshake failed (is its certificate trusted?)",
        "closed": "it closed the connection before replying",
        "cut": "its reply broke off after the head, before any of its body",
        "protocol": "its reply was not valid HTTP/1.1",
    }.get(exc.kind, exc.kind)
    return GatewayError(
        502,
        f"Upstream '{deployment}' could not be reached: {reason}.",
        UPSTREAM,
        "upstream_unreachable",
        headers=named,
    )


ERROR_SNIPPET = 300  # characters of a non-JSON upstream error shown to the client


def upstream_not_json(status: int, reason: str, body: bytes, deployment: str) -> GatewayError:
    """An upstream error that is not JSON (an HTML page from a load balancer, a plain-text
    message, an empty body), turned into the OpenAI shape that clients parse, with the same
    status, its reason phrase and the start of its body (already redacted: clean_error)."""
    text = " ".join(body[: ERROR_SNIPPET * 4].decode("utf-8", "replace").split())
    if len(text) > ERROR_SNIPPET:
        text = text[:ERROR_SNIPPET] + "..."
    return GatewayError(
        status,
        f"Upstream '{deployment}' answered {_status_line(status, reason)}"
        + (f": {text}" if text else ", with an empty body."),
        UPSTREAM,
        "upstream_error",
        headers={DEPLOYMENT_HEADER: deployment},
    )


def head_too_large(field_bytes: int, headers: int) -> GatewayError:
    return GatewayError(
        431,
        f"The request head is too large: a request line or header field over {field_bytes} "
        f"bytes, or more than {headers} header fields.",
        INVALID_REQUEST,
        "request_header_fields_too_large",
    )


MAX_ERROR_BODY = 1024 * 1024  # bytes of an upstream's error reply, decoded, that are relayed


def clean_error(
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes,
    deployment: str,
    secrets: Iterable[str],
) -> tuple[list[tuple[str, str]], bytes]:
    """An upstream's error reply as it may reach the client: its body decoded when it came
    gzip- or deflate-compressed (the key check must see the text; it then goes uncompressed)
    and the deployment's keys blanked out of it (`headers` come so from reply_headers, which
    does it for every reply). GatewayError, in the OpenAI shape with the same status, for a
    reply we cannot read (br, zstd, over MAX_ERROR_BODY) or that is not JSON."""
    encoding = next((v for k, v in headers if k.lower() == "content-encoding"), "")
    plain = _decoded(body, encoding.strip().lower()) if len(body) <= MAX_ERROR_BODY else None
    if plain is None:
        raise GatewayError(
            status,
            f"Upstream '{deployment}' answered {_status_line(status, reason)}; its body (encoded as "
            f"'{encoding or 'identity'}', {len(body)} bytes or more) is not shown.",
            UPSTREAM,
            "upstream_error",
            headers={DEPLOYMENT_HEADER: deployment},
        )
    plain = redact(plain, secrets)
    if encoding:
        headers = [(k, v) for k, v in headers if k.lower() != "content-encoding"]
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    if not is_json(content_type.lower()):
        raise upstream_not_json(status, reason, plain, deployment)
    return headers, plain


def _status_line(status: int, reason: str) -> str:
    return f"{status} {reason}" if reason else str(status)


def _decoded(body: bytes, encoding: str) -> bytes | None:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    # gzip, or deflate as zlib data; some servers send deflate raw (without zlib's header).
    for wbits in (16 + zlib.MAX_WBITS,) if "gzip" in encoding else (zlib.MAX_WBITS, -15):
        try:
            plain = zlib.decompressobj(wbits).decompress(body, MAX_ERROR_BODY + 1)
        except zlib.error:
            continue
        return plain if len(plain) <= MAX_ERROR_BODY else None
    return None


def too_many_connections() -> GatewayError:
    return GatewayError(
        503,
        "The gateway holds as many connections as it may; retry shortly.",
        UNAVAILABLE,
        "overloaded",
        headers={"Retry-After": "1"},
    )


def internal() -> GatewayError:
    return GatewayError(
        500, "Internal error in the gateway; see its log.", SERVER, "internal_error"
    )
