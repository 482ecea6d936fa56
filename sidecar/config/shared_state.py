"""Where shared state lives: LiteLLM's redis_* keys (router_settings, then REDIS_* variables)
and ours, sidecar_settings.shared_state (namespace, sync_interval, on_redis_down)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from sidecar.config.values import resolve, secret
from sidecar.deployment import ConfigError

REDIS_KEYS = ("redis_host", "redis_port", "redis_password", "redis_url")
ON_REDIS_DOWN = ("local", "deny")
DEFAULT_PORT = 6379
DEFAULT_SYNC = 0.5  # seconds
MAX_SYNC = 60.0


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
    try:
        import redis.asyncio  # noqa: F401 - what the sidecar will run on; imported at start anyway
    except ImportError:
        raise ConfigError(
            path,
            "Redis is configured but the redis package is not installed: "
            "pip install 'sidecar[redis]'",
        ) from None
    for key, value in (ours or {}).items():
        at = f"{where}.{key}"
        if key == "namespace":
            if not isinstance(value, str) or not value or any(c in value for c in " \t\r\n{}"):
                raise ConfigError(at, "must be a non-empty name without spaces or braces")
        elif key == "sync_interval":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= MAX_SYNC
            ):
                raise ConfigError(at, f"must be a number of seconds from 0 to {MAX_SYNC:g}")
            value = float(value)
        elif key == "on_redis_down":
            if value not in ON_REDIS_DOWN:
                raise ConfigError(at, f"must be one of: {', '.join(ON_REDIS_DOWN)}")
        else:
            raise ConfigError(at, "unknown key (known: namespace, sync_interval, on_redis_down)")
        values[key] = value
    return SharedSettings(**values)


def _redis(router: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, dict[str, Any]] | None:
    """(the key path that configured it, SharedSettings' Redis fields): the table's redis_*
    keys, else the REDIS_* variables; a URL wins over host, port and password."""
    given = {k: resolve(v, env, f"router_settings.{k}") for k, v in router.items() if v is not None}

    from_table = bool(given)
    if not from_table:
        given = {k: env[k.upper()] for k in REDIS_KEYS if env.get(k.upper())}

    def path(key: str) -> str:
        return f"router_settings.{key}" if from_table else key.upper()

    if "redis_url" in given:
        return path("redis_url"), _url(given["redis_url"], path("redis_url"))
    if "redis_host" not in given:
        if given and from_table:  # a port or a password, but no host
            raise ConfigError(path("redis_host"), "is needed with the other Redis settings")
        return None
    host = given["redis_host"]
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(path("redis_host"), "must be a host name")
    values: dict[str, Any] = {"host": host.strip()}
    if "redis_port" in given:
        values["port"] = _port(given["redis_port"], path("redis_port"))
    if "redis_password" in given:
        password = secret(given["redis_password"], path("redis_password"))
        values["password"] = password or None
    return path("redis_host"), values


def _port(value: Any, where: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(where, "must be a port number") from None
    if isinstance(value, bool) or not 0 < port < 65536:
        raise ConfigError(where, "must be a port number")
    return port


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
        values["port"] = port
    if parts.username:
        values["username"] = unquote(parts.username)
    if parts.password:
        values["password"] = unquote(parts.password)
    db = parts.path.strip("/")
    if db:
        if not db.isdigit():
            raise ConfigError(where, "the path must be a database number (/0)")
        values["db"] = int(db)
    return values
