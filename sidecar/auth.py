"""Client keys: who may call, which models, how often.

Keys are held only as SHA-256 digests. A presented key is hashed and looked up by its digest,
so the time taken depends on neither where a wrong key differs nor its length, and no key is
ever kept in memory in the clear.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def digest(key: str) -> bytes:
    # surrogateescape: header bytes that are not UTF-8 reach us escaped, and must hash, not fail.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def fingerprint(key_digest: bytes) -> str:
    """What may be shown of a key: the start of its SHA-256 (`sha256:1a2b3c4d`)."""
    return "sha256:" + key_digest.hex()[:8]


def patterns(names: Iterable[str]) -> re.Pattern[str]:
    """Model names where '*' stands for any text, as one expression."""
    return re.compile("|".join(".*".join(map(re.escape, n.split("*"))) for n in names), re.DOTALL)


@dataclass(frozen=True, slots=True)
class ClientKey:
    name: str  # shown in logs and metrics instead of the key
    digest: bytes
    models: re.Pattern[str] | None = None  # the model names it may use; None: all
    rpm: int | None = None  # requests a minute; None: no limit
    tpm: int | None = None  # tokens a minute; None: no limit
    names: tuple[str, ...] = ()  # the patterns `models` was made from, for display
    max_budget: float | None = None  # USD it may spend in a period; None: no budget
    budget_duration: float | None = None  # seconds a period lasts; None: one, for ever

    def allows(self, model: str) -> bool:
        return self.models is None or self.models.fullmatch(model) is not None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent (its fields by lower-case name): `Authorization: Bearer <key>`
    (OpenAI SDKs), `api-key` (Azure's) or `x-api-key` (Anthropic's SDK, Claude Code)."""
    value = headers.get("authorization")
    if value is not None:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
        return None
    value = headers.get("api-key")
    return value if value is not None else headers.get("x-api-key")


OPEN = ClientKey("", b"")  # stands for every caller when no key is configured


class KeyRing:
    def __init__(self, keys: Iterable[ClientKey]) -> None:
        self.by_digest = {k.digest: k for k in keys}

    def identify(self, headers: Mapping[str, str]) -> ClientKey | None:
        """The caller's key; OPEN when no key is configured; None for a missing or wrong one."""
        if not self.by_digest:
            return OPEN
        key = presented_key(headers)
        if not key:
            return None
        return self.by_digest.get(digest(key))
