"""litellm_settings.cache and cache_params: LiteLLM's response-cache settings, as it writes them.

The rest of litellm_settings stays LiteLLM's own business (a warning says it is ignored).
`type: redis` uses cache_params' host, port and password when given, else the Redis of the
shared state (router_settings.redis_*, REDIS_*).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config.shared_state import SharedSettings, redis_fields, require_redis
from sidecar.config.values import resolve
from sidecar.deployment import ConfigError
from sidecar.routes import Endpoint

DEFAULT_TTL = 600.0  # seconds
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # the memory entries may take with type local
# LiteLLM's call types, async and sync names alike, and the endpoint each one is.
CALL_TYPES = {
    "acompletion": Endpoint.CHAT,
    "completion": Endpoint.CHAT,
    "atext_completion": Endpoint.COMPLETIONS,
    "text_completion": Endpoint.COMPLETIONS,
    "aembedding": Endpoint.EMBEDDINGS,
    "embedding": Endpoint.EMBEDDINGS,
    "arerank": Endpoint.RERANK,  # a ranking is as deterministic as an embedding: when listed
    "rerank": Endpoint.RERANK,
}
MODES = ("default_on", "default_off")
# cache_params keys LiteLLM has for backends this gateway does not run (s3, qdrant, ...).
_KNOWN = frozenset({"type", "ttl", "namespace", "supported_call_types", "mode", "max_bytes"})
_REDIS = ("host", "port", "password")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    kind: str = "local"  # local | redis
    ttl: float = DEFAULT_TTL
    namespace: str = "sidecar"
    endpoints: frozenset[Endpoint] = frozenset(
        {Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS}
    )  # LiteLLM's default: all three
    default_on: bool = True
    max_bytes: int = DEFAULT_MAX_BYTES  # local only
    redis: SharedSettings | None = None  # type: redis, where


def cache_settings(
    raw: Mapping[str, Any],
    shared: SharedSettings | None,
    env: Mapping[str, str],
    warnings: list[str],
) -> CacheSettings | None:
    """From litellm_settings (`raw`): None when the cache is off (the default)."""
    for key in raw:
        if key not in ("cache", "cache_params"):
            warnings.append(f"litellm_settings.{key}: not used by this gateway; ignored")
    enabled = raw.get("cache", False)
    if not isinstance(enabled, bool):
        raise ConfigError("litellm_settings.cache", "must be true or false")
    params = raw.get("cache_params") or {}
    if not isinstance(params, dict):
        raise ConfigError("litellm_settings.cache_params", "must be a mapping")
    if not enabled:
        if params:
            warnings.append(
                "litellm_settings.cache_params: the cache is off (cache: true turns it on)"
            )
        return None
    where = "litellm_settings.cache_params"
    values: dict[str, Any] = {}
    for key, value in params.items():
        at = f"{where}.{key}"
        if key in _REDIS:
            continue
        if key not in _KNOWN:
            warnings.append(f"{at}: not used by this gateway; ignored")
        elif key == "type":
            if value not in ("local", "redis"):
                raise ConfigError(at, "must be local or redis (the backends this gateway runs)")
            values["kind"] = value
        elif key == "ttl":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= 365 * 24 * 3600
            ):
                raise ConfigError(at, "must be a positive number of seconds, up to a year")
            values["ttl"] = float(value)
        elif key == "namespace":
            if not isinstance(value, str) or not value or any(c in value for c in " \t\r\n"):
                raise ConfigError(at, "must be a non-empty name without spaces")
            values["namespace"] = value
        elif key == "supported_call_types":
            if not isinstance(value, list) or not value or any(v not in CALL_TYPES for v in value):
                known = ", ".join(CALL_TYPES)
                raise ConfigError(at, f"must be a list of call types (known: {known})")
            values["endpoints"] = frozenset(CALL_TYPES[v] for v in value)
        elif key == "mode":
            if value not in MODES:
                raise ConfigError(at, "must be default_on or default_off")
            values["default_on"] = value == "default_on"
        elif key == "max_bytes":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise ConfigError(at, "must be a number of bytes, at least 1024")
            values["max_bytes"] = value
    if values.get("kind") == "redis":
        require_redis(f"{where}.type")
        given = {
            f"redis_{k}": resolve(params[k], env, f"{where}.{k}")
            for k in _REDIS
            if params.get(k) is not None
        }
        where_redis: SharedSettings
        if given:
            where_redis = SharedSettings(**redis_fields(given, lambda k: f"{where}.{k[6:]}"))
        elif shared is not None:
            where_redis = shared
        else:
            raise ConfigError(
                f"{where}.type",
                "redis needs a Redis: cache_params.host, or router_settings.redis_host (or REDIS_HOST)",
            )
        values["redis"] = where_redis
    return CacheSettings(**values)
