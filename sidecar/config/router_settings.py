"""router_settings: LiteLLM's routing, retry, cooldown and fallback settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.values import seconds
from sidecar.deployment import ConfigError

DEFAULT_TIMEOUT = 600.0  # seconds; LiteLLM's default request timeout
DEFAULT_RETRIES = 2
DEFAULT_ALLOWED_FAILS = 3
DEFAULT_COOLDOWN = 5.0  # seconds

_ROUTER_KEYS: dict[str, tuple[type | tuple[type, ...], ...]] = {
    "routing_strategy": (str,),
    "num_retries": (int,),
    "timeout": (int, float),
    "stream_timeout": (int, float),
    "allowed_fails": (int,),
    "cooldown_time": (int, float),
    "fallbacks": (list,),
    "context_window_fallbacks": (list,),
    "content_policy_fallbacks": (list,),
    "default_fallbacks": (list,),
    "retry_after": (int, float),
    "enable_pre_call_checks": (bool,),
}
# LiteLLM's strategy names; all but the default are accepted and, for now, served by it.
ROUTING_STRATEGIES = (
    "simple-shuffle",
    "least-busy",
    "latency-based-routing",
    "usage-based-routing",
    "usage-based-routing-v2",
    "cost-based-routing",
)
# Settings that load but do not act yet: each is named in a warning at load time.
_NOT_YET = "parsed, but not acted on by this version"


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """router_settings, LiteLLM's names. Zero retries means one attempt; the defaults retry
    twice, which hides a lost connection or one bad reply from the client."""

    routing_strategy: str = "simple-shuffle"
    num_retries: int = DEFAULT_RETRIES  # attempts after the first, per model group
    timeout: float = DEFAULT_TIMEOUT  # seconds; per deployment `timeout` wins
    stream_timeout: float | None = None  # None: `timeout` applies between chunks too
    allowed_fails: int = DEFAULT_ALLOWED_FAILS  # failures a minute a deployment may have ...
    cooldown_time: float = DEFAULT_COOLDOWN  # ... before it is skipped for this many seconds
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # group -> next ones
    default_fallbacks: tuple[str, ...] = ()  # for every group without its own
    retry_after: float = 0.0  # seconds waited at least before a retry (LiteLLM's meaning)
    enable_pre_call_checks: bool = False  # True: rpm/tpm are limits, not only weights


def router_settings(raw: Mapping[str, Any], warnings: list[str]) -> RouterSettings:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"router_settings.{key}"
        if key not in _ROUTER_KEYS:
            warnings.append(f"{path}: not used by this gateway; ignored")
            continue
        if value is None:
            continue
        types = _ROUTER_KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)  # type: ignore[union-attr]
            raise ConfigError(path, f"must be {names}, not {type(value).__name__}")
        values[key] = value
    strategy = values.get("routing_strategy", "simple-shuffle")
    if strategy not in ROUTING_STRATEGIES:
        raise ConfigError(
            "router_settings.routing_strategy",
            f"unknown strategy '{strategy}' (known: {', '.join(ROUTING_STRATEGIES)})",
        )
    if strategy in ("usage-based-routing", "usage-based-routing-v2", "cost-based-routing"):
        warnings.append(f"router_settings.routing_strategy: {_NOT_YET}; simple-shuffle serves")
    for key in values:
        if key in ("context_window_fallbacks", "content_policy_fallbacks"):
            warnings.append(f"router_settings.{key}: {_NOT_YET}")
    for key in ("timeout", "stream_timeout", "cooldown_time"):
        if key in values:
            values[key] = seconds(values[key], f"router_settings.{key}")
    for key in ("num_retries", "allowed_fails"):
        if values.get(key, 0) < 0:
            raise ConfigError(f"router_settings.{key}", "must not be negative")
    if values.get("retry_after", 0) < 0:
        raise ConfigError("router_settings.retry_after", "must not be negative")
    return RouterSettings(
        routing_strategy=strategy,
        num_retries=values.get("num_retries", DEFAULT_RETRIES),
        timeout=values.get("timeout", DEFAULT_TIMEOUT),
        stream_timeout=values.get("stream_timeout"),
        allowed_fails=values.get("allowed_fails", DEFAULT_ALLOWED_FAILS),
        cooldown_time=values.get("cooldown_time", DEFAULT_COOLDOWN),
        fallbacks=_fallbacks(values.get("fallbacks", [])),
        default_fallbacks=tuple(
            _names(values.get("default_fallbacks", []), "router_settings.default_fallbacks")
        ),
        retry_after=float(values.get("retry_after", 0.0)),
        enable_pre_call_checks=values.get("enable_pre_call_checks", False),
    )


def _fallbacks(raw: list[Any]) -> dict[str, tuple[str, ...]]:
    """LiteLLM's `[{group: [next, ...]}, ...]` as {group: (next, ...)}."""
    out: dict[str, tuple[str, ...]] = {}
    for i, item in enumerate(raw):
        where = f"router_settings.fallbacks[{i}]"
        if not isinstance(item, dict) or not item:
            raise ConfigError(where, "must be a mapping {model_name: [fallback, ...]}")
        for group, targets in item.items():
            if isinstance(targets, str):
                targets = [targets]
            out[str(group)] = tuple(_names(targets, f"{where}.{group}"))
    return out


def _names(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise ConfigError(where, "must be a list of model names")
    return list(raw)
