"""Where shared state lives: LiteLLM's redis_* keys (router_settings, then REDIS_* variables)
and ours, sidecar_settings.shared_state (namespace, sync_interval, on_redis_down)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from sidecar.config.values import resolve, secret
from sidecar.deployment import ConfigError

REDIS_KEYS = ("redis_host", "redis_port", "redis_password", "redis_url")
ON_REDIS_DOWN = ("local", "deny")
DEFAULT_PORT = 6379
DEFAULT_SYNC = 0.5  # seconds
MIN_SYNC = 0.01  # 100 syncs a second per instance, at most
MAX_SYNC = 60.0
MAX_DB = 2**31 - 1


@dataclass(frozen=True, slots=True)
class SharedSettings:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    namespace: str = "sidecar"
    sync_interval: float = DEFAULT_SYNC  # 0: every admission asks Redis
    on_redis_down: str = "local"

    @property
    def target(self) -> str:
        """Where Redis is, as a URL without its password: for --check and the logs."""
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()


def shared_settings(
    router: Mapping[str, Any], ours: Any, env: Mapping[str, str]
) -> SharedSettings | None:
    """The shared-state settings, or None when no Redis is configured (each process alone).
    `router` holds router_settings' redis_* keys, `ours` sidecar_settings.shared_state."""
    where = "sidecar_settings.shared_state"
    if ours is not None and not isinstance(ours, dict):
        raise ConfigError(where, "must be a mapping (namespace, sync_interval, on_redis_down)")
    found = _redis(router, env)
    if found is None:
        if ours:
            raise ConfigError(
                where,
                "needs a Redis: set router_settings.redis_host (or redis_url), or REDIS_HOST",
            )
        return None
    path, values = found
    require_redis(path)
    for key, value in (ours or {}).items():
        at = f"{where}.{key}"
        if key == "namespace":
            if not isinstance(value, str) or not value or any(c in value for c in " \t\r\n{}"):
                raise ConfigError(at, "must be a non-empty name without spaces or braces")
        elif key == "sync_interval":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (value == 0 or MIN_SYNC <= value <= MAX_SYNC)
            ):
                raise ConfigError(
                    at, f"must be 0 or a number of seconds from {MIN_SYNC:g} to {MAX_SYNC:g}"
                )
            value = float(value)
        elif key == "on_redis_down":
            if value not in ON_REDIS_DOWN:
                raise ConfigError(at, f"must be one of: {', '.join(ON_REDIS_DOWN)}")
        else:
            raise ConfigError(at, "unknown key (known: namespace, sync_interval, on_redis_down)")
        values[key] = value
    return SharedSettings(**values)


def require_redis(path: str) -> None:
    """A ConfigError at `path` when the redis package (the optional extra) is missing; it is
    imported at start anyway, so checking here costs nothing."""
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise ConfigError(
            path,
            "Redis is configured but the redis package is not installed: "
            "pip install 'sidecar[redis]'",
        ) from None


def _redis(router: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, dict[str, Any]] | None:
    """(the key path that configured it, SharedSettings' Redis fields). The table's redis_*
    keys first; the REDIS_* variables fill in what it leaves out, key by key as LiteLLM reads
    them (a table's redis_host takes REDIS_PORT and REDIS_PASSWORD from the environment),
    and name the Redis alone when the table names none. A URL wins over host and port."""
    given = {k: resolve(v, env, f"router_settings.{k}") for k, v in router.items() if v is not None}
    source = {k: f"router_settings.{k}" for k in given}
    for k in REDIS_KEYS:
        if k not in given and env.get(k.upper()):
            if given and k in ("redis_url", "redis_host"):
                continue  # the table names its Redis: the environment does not change which
            given[k] = env[k.upper()]
            source[k] = k.upper()

    def path(key: str) -> str:
        return source.get(key, f"router_settings.{key}")

    if "redis_url" not in given and "redis_host" not in given:
        if any(s.startswith("router_settings.") for s in source.values()):
            # a port or a password in the table, but no host
            raise ConfigError(path("redis_host"), "is needed with the other Redis settings")
        return None
    where = path("redis_url" if "redis_url" in given else "redis_host")
    return where, redis_fields(given, path)


def redis_fields(given: Mapping[str, Any], path: Callable[[str], str]) -> dict[str, Any]:
    """SharedSettings' Redis fields from redis_url, or redis_host, redis_port and
    redis_password (values resolved already); `path` names a key for an error."""
    if "redis_url" in given:
        return _url(given["redis_url"], path("redis_url"))
    host = given.get("redis_host")
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(path("redis_host"), "must be a host name")
    host = host.strip()
    if ":" in host and not _is_ipv6(host):
        raise ConfigError(path("redis_host"), "must be a host name without a port (see redis_port)")
    values: dict[str, Any] = {"host": host}
    if "redis_port" in given:
        values["port"] = _port(given["redis_port"], path("redis_port"))
    if "redis_password" in given:
        password = secret(given["redis_password"], path("redis_password"))
        values["password"] = password or None
    return values


def _port(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(where, "must be a port number (1-65535)")
    return value


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).version == 6
    except ValueError:
        return False


def _url(value: Any, where: str) -> dict[str, Any]:
    """redis://[[user]:password@]host[:port][/db] or rediss://...; the message of an error
    never repeats the URL, which may hold a password."""
    if not isinstance(value, str):
        raise ConfigError(where, "must be a redis:// or rediss:// URL")
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(where, "is not a valid URL") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(where, "must be a redis:// or rediss:// URL with a host")
    values: dict[str, Any] = {"host": parts.hostname, "tls": parts.scheme == "rediss"}
    if port is not None:
        values["port"] = _port(port, where)
    if parts.username:
        values["username"] = unquote(parts.username)
    if parts.password:
        values["password"] = unquote(parts.password)
    db = parts.path.strip("/")
    if db:
        if not db.isdigit() or int(db) > MAX_DB:
            raise ConfigError(where, "the path must be a database number (/0)")
        values["db"] = int(db)
    return values
