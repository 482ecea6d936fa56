"""Checks every section shares: environment references, mappings, keys, durations, names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.deployment import ConfigError

ENV_PREFIX = "os.environ/"


def resolve(value: Any, env: Mapping[str, str], where: str) -> Any:
    """Replace os.environ/NAME strings, at any depth, by the variable's value."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        if name not in env:
            raise ConfigError(where, f"environment variable {name} is not set")
        return env[name]
    if isinstance(value, dict):
        return {k: resolve(v, env, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(where, "must be a mapping")
    return value


def secret(value: Any, where: str) -> str:
    """A key, without the surrounding white space a file-mounted Secret tends to end with."""
    if not isinstance(value, str):
        raise ConfigError(where, f"must be a string, not {type(value).__name__}")
    key: str = value.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ConfigError(where, "must not contain control characters")
    return key


def env_value(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(where, "must be a string")
    return str(value)


def seconds(value: Any, where: str) -> float:
    try:
        count = float(value)
    except ValueError:
        raise ConfigError(where, f"must be a number of seconds, not {value!r}") from None
    if not count > 0 or count == float("inf"):
        raise ConfigError(where, "must be a positive number of seconds")
    return count


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def is_token(name: str) -> bool:
    """An HTTP field name (RFC 9110 5.1)."""
    return bool(name) and all(c in _TOKEN_CHARS for c in name)
