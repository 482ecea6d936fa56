"""Header rules in one place: what goes upstream, and what of the upstream's reply comes back.

Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are never relayed, nor are the
ones a relayed body invalidates (its length and framing) or that our own server sets.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

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
_OURS = frozenset({"content-length", "date", "server", "set-cookie"})
_NOT_RELAYED = HOP_BY_HOP | _OURS

DEPLOYMENT_HEADER = "x-sidecar-deployment"

# Streams must reach the client as they are written: no cache, and no buffering in an nginx-style
# ingress in front (X-Accel-Buffering is nginx's per-response switch).
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def upstream_request_headers(
    deployment_headers: Mapping[str, str], client: CIMultiDictProxy[str]
) -> dict[str, str]:
    """Headers for the upstream call. Nothing of the client's goes up but what it accepts:
    never its Authorization, cookies or proxy headers. The reply is relayed undecoded, so the
    upstream may compress only if the client said it can decompress."""
    headers = {
        "Content-Type": "application/json",
        "Accept-Encoding": client.get("Accept-Encoding", "identity"),
    }
    accept = client.get("Accept")
    if accept is not None:
        headers["Accept"] = accept
    headers.update(deployment_headers)
    return headers


def reply_headers(upstream: CIMultiDictProxy[str], deployment_id: str) -> CIMultiDict[str]:
    """The upstream's end-to-end headers (content type, encoding, rate-limit hints ...)."""
    out: CIMultiDict[str] = CIMultiDict()
    connection_tokens = {
        t.strip().lower() for t in upstream.get("Connection", "").split(",") if t.strip()
    }
    for name, value in upstream.items():
        low = name.lower()
        if low not in _NOT_RELAYED and low not in connection_tokens:
            out.add(name, value)
    out[DEPLOYMENT_HEADER] = deployment_id
    return out
