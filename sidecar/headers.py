"""Header rules in one place: what goes upstream, and what of the upstream's reply comes back.

Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never relayed, nor are the
ones a relayed body invalidates (its length and framing) or that our own server sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sidecar.redact import redact_text

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by our own server for our connection to the client; an upstream's copy would be a duplicate.
# (Set-Cookie is end to end, the upstream's to set: sticky sessions behind a balancer use it.)
# X-Request-Id is the client's, or ours: every reply carries the request's own.
_OURS = frozenset({"content-length", "date", "server", "x-request-id"})
_NOT_RELAYED = HOP_BY_HOP | _OURS

DEPLOYMENT_HEADER = "x-sidecar-deployment"  # which deployment served
ATTEMPTS_HEADER = "x-sidecar-attempts"  # how many upstream calls it took, retries included
CACHE_HEADER = "x-sidecar-cache"  # hit, miss or bypass, when a response cache is configured
COST_HEADER = "x-sidecar-cost"  # USD, from the reply's usage and the deployment's prices
LITELLM_COST_HEADER = "x-litellm-response-cost"  # the same, under LiteLLM's name
REQUEST_ID_HEADER = "x-request-id"  # the client's, or made here; sent upstream and returned

# Streams must reach the client as they are written: no cache, and no buffering in an nginx-style
# ingress in front (X-Accel-Buffering is nginx's per-response switch).
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# What of the client's request may go upstream is only what it accepts back (client_headers),
# never its Authorization, api-key, cookies or proxy headers.


def request_head(
    method: str,
    target: str,
    authority: str,
    fixed: Mapping[str, str],
    content_type: str | None = "application/json",
) -> bytes:
    """The start of every upstream request of one deployment and endpoint, built at load time:
    request line, Host, the content type (None: given per request), the deployment's key and
    extra headers. Per request, client_headers() and the body's length follow."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{name}: {value}" for name, value in fixed.items()]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


IDENTITY = b"Accept-Encoding: identity\r\n"


def client_headers(client: Mapping[str, str]) -> tuple[bytes, bytes]:
    """The per-request header lines taken from the client (its fields by lower-case name): its
    Accept, and its Accept-Encoding. A relayed reply is not decoded, so the upstream may
    compress only if the client said it can decompress; a reply the gateway must translate is
    asked for uncompressed (IDENTITY)."""
    accept = client.get("accept")
    encoding = client.get("accept-encoding")
    return (
        f"Accept: {accept}\r\n".encode("latin-1", "replace") if _clean(accept) else b"",
        f"Accept-Encoding: {encoding}\r\n".encode("latin-1", "replace")
        if _clean(encoding)
        else IDENTITY,
    )


# What Anthropic's clients send for the server to read (the API version, opted-in betas):
# passed on, on the Messages paths only.
ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")


def anthropic_headers(client: Mapping[str, str]) -> bytes:
    """The header lines of ANTHROPIC_HEADERS the client sent, as it sent them."""
    lines = [
        f"{name}: {value}\r\n".encode("latin-1", "replace")
        for name in ANTHROPIC_HEADERS
        if _clean(value := client.get(name))
    ]
    return b"".join(lines)


def _clean(value: str | None) -> bool:
    return value is not None and "\r" not in value and "\n" not in value and "\0" not in value


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip()
    return media == "application/json" or media.endswith("+json")


Fields = list[tuple[str, str]]


def reply_headers(
    upstream: Iterable[tuple[str, str]], named: Mapping[str, str], secrets: tuple[str, ...] = ()
) -> tuple[Fields, str]:
    """The upstream's end-to-end headers (content type, encoding, rate-limit hints ...) with
    ours (`named`, lower-case names) in place of any of the same name, the deployment's keys
    (`secrets`) blanked out of their values, and its content type in lower case."""
    out: Fields = []
    content_type = ""
    listed: set[str] | None = None  # the fields the upstream's Connection header names
    for name, value in upstream:
        low = name.lower()
        if low in _NOT_RELAYED or low in named:
            if low == "connection":
                named_here = {t.strip().lower() for t in value.split(",")} - _NOT_RELAYED
                listed = (listed or set()) | named_here
            continue
        if secrets:
            value = redact_text(value, secrets)
        if low == "content-type":
            content_type = value.lower()
        out.append((name, value))
    if listed:  # rare: "Connection: keep-alive" or "close" names no other field
        out = [(name, value) for name, value in out if name.lower() not in listed]
    out.extend(named.items())
    return out, content_type


def has(fields: Fields, name: str) -> bool:
    """Whether a field of this (lower-case) name is among `fields`."""
    return any(k.lower() == name for k, _ in fields)
