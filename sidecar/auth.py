"""Client keys. The master key is kept only as a digest and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from multidict import CIMultiDictProxy


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def presented_key(headers: CIMultiDictProxy[str]) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (OpenAI SDKs) or `api-key` (Azure's)."""
    value = headers.get("Authorization")
    if value is not None:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
        return None
    return headers.get("api-key")


def allowed(headers: CIMultiDictProxy[str], key_digest: bytes | None) -> bool:
    """True when no key is configured or the client presented it. Comparing digests keeps the
    time independent of where the strings differ and of their lengths."""
    if key_digest is None:
        return True
    key = presented_key(headers)
    return key is not None and hmac.compare_digest(digest(key), key_digest)
