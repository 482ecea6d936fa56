"""The deployment's keys blanked out of what an upstream sends back: an upstream may quote the
key it was sent ("invalid key sk-...") in its body, a header field or even its reason phrase,
and no key of ours may reach a client."""

from __future__ import annotations

from collections.abc import Iterable

BLANK = "[redacted]"


def redact(body: bytes, secrets: Iterable[str]) -> bytes:
    for secret in secrets:
        body = body.replace(secret.encode("latin-1"), BLANK.encode())
    return body


def redact_text(value: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in value:
            value = value.replace(secret, BLANK)
    return value
