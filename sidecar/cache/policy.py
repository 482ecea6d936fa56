"""Whether and how one request uses the cache, and the key of its entry. Pure.

The per-request controls are LiteLLM's: the body's `cache` object (`no-cache`, `no-store`,
`ttl`, `s-maxage`, `use-cache`) and the `Cache-Control: no-cache | no-store` header.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from sidecar import errors
from sidecar.config.cache import CacheSettings
from sidecar.routes import Endpoint

HIT, MISS, BYPASS = "hit", "miss", "bypass"
MAX_TTL = 365 * 24 * 3600  # seconds: a year, as long as an entry may be asked to live
# In memory, a request whose canonical body is no longer than this is its entry's key itself:
# a dict compares keys whole, so it needs no hash of ours, and SHA-256 (its set-up above all)
# was most of what a miss cost. A longer one, and every key on Redis, is its digest.
EXACT_UP_TO = 2048  # bytes


class Use(NamedTuple):
    """What a request may do with the cache (a tuple: one is made for every request)."""

    key: bytes  # the SHA-256 digest that names the entry
    read: bool  # an entry may answer it
    store: bool  # its reply may be kept
    ttl: float  # seconds a kept reply lives
    max_age: float | None  # s-maxage: only an entry younger than this answers


def use(
    settings: CacheSettings,
    endpoint: Endpoint,
    group: str,
    scope: bytes,
    body: dict[str, Any],
    controls: Any,
    headers: Mapping[str, str],
) -> Use | None:
    """None when the request bypasses the cache. `controls` is the body's `cache` field,
    already taken out of `body`; `scope` the caller's key, so no key reads another's."""
    if controls is None and settings.default_on and "cache-control" not in headers:
        # The common case, no controls at all: read and store, for the table's ttl.
        if endpoint not in settings.endpoints:
            return None
        exact = settings.kind == "local"
        return Use(key(endpoint, group, scope, body, exact), True, True, settings.ttl, None)
    no_cache = no_store = opted_in = False
    ttl = settings.ttl
    max_age = None
    if controls is not None:
        if not isinstance(controls, dict):
            raise _invalid("must be an object")
        for name, value in controls.items():
            if name in ("no-cache", "no-store", "use-cache"):
                if not isinstance(value, bool):
                    raise _invalid(f"'{name}' must be true or false")
                no_cache |= name == "no-cache" and value
                no_store |= name == "no-store" and value
                opted_in |= name == "use-cache" and value
            elif name in ("ttl", "s-maxage"):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not 0 <= value <= MAX_TTL
                ):
                    raise _invalid(f"'{name}' must be a number of seconds up to {MAX_TTL}")
                if name == "ttl":
                    ttl = float(value)
                else:
                    max_age = float(value)
            # Other names (LiteLLM's `namespace`, ...) are LiteLLM's own: ignored, as there.
    if endpoint not in settings.endpoints:
        return None
    directives = headers.get("cache-control")
    if directives:
        tokens = {d.strip().lower() for d in directives.split(",")}
        no_cache |= "no-cache" in tokens
        no_store |= "no-store" in tokens
    if not settings.default_on and not opted_in:
        return None
    read, store = not no_cache, not no_store and ttl > 0
    if not read and not store:
        return None
    exact = settings.kind == "local"
    return Use(key(endpoint, group, scope, body, exact), read, store, ttl, max_age)


def key(endpoint: Endpoint, group: str, scope: bytes, body: dict[str, Any], exact: bool) -> bytes:
    """The entry's name: the caller's key (`scope`: its digest, of fixed length, or empty on a
    gateway without keys, which has no other caller), the endpoint (with or without /v1 it is
    one), the model group and the body in canonical form (keys sorted). `exact`: the name
    itself when it is short (marked "="), else its SHA-256 digest (marked "#"), so that the
    two kinds never meet."""
    named = scope + f"\0{endpoint._value_}\0{group}\0".encode()
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    if exact and len(canonical) <= EXACT_UP_TO:
        return b"=" + named + canonical
    digest = hashlib.sha256(named)
    digest.update(canonical)  # the body fed as it is, not joined to the rest first
    return b"#" + digest.digest()


def _invalid(why: str) -> errors.GatewayError:
    return errors.bad_request(
        f"The request's 'cache' field {why}.", "cache", "invalid_cache_control"
    )
