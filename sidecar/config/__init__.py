"""Load the routing table (YAML or TOML, LiteLLM's schema) into frozen, validated settings.

Everything is checked here, before any socket opens; every error names the file and the key path.
One module per section: model_list, router_settings, keys, sidecar_settings; values holds the
checks they share.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sidecar.auth import ClientKey
from sidecar.config.cache import CacheSettings, cache_settings
from sidecar.config.keys import all_keys
from sidecar.config.model_list import check_fallbacks, deployment_of
from sidecar.config.otel import OtelSettings, otel_settings
from sidecar.config.router_settings import ROUTING_STRATEGIES, RouterSettings, router_settings
from sidecar.config.shared_state import REDIS_KEYS, SharedSettings, shared_settings
from sidecar.config.sidecar_settings import (
    ServerSettings,
    restart_needed,
    server_settings,
    workers_auto,
)
from sidecar.config.values import env_value, mapping
from sidecar.deployment import ConfigError, Deployment

__all__ = [
    "ROUTING_STRATEGIES",
    "CacheSettings",
    "Config",
    "ConfigError",
    "RouterSettings",
    "ServerSettings",
    "SharedSettings",
    "load",
    "parse",
    "restart_needed",
    "workers_auto",
]

# LiteLLM sections we accept so that its configs load, and what we say about them.
_FOREIGN_SECTIONS = frozenset(
    {
        "callback_settings",
        "credential_list",
        "guardrails",
        "include",
        "files_settings",
        "assistant_settings",
        "finetune_settings",
        "mcp_servers",
        "search_tools",
        "vector_store_registry",
        "prompts",
    }
)
_SECTIONS = frozenset(
    {
        "model_list",
        "router_settings",
        "general_settings",
        "sidecar_settings",
        "environment_variables",
        "litellm_settings",
    }
)


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    deployments: tuple[Deployment, ...]
    keys: tuple[ClientKey, ...]  # the master key first when there is one; empty: no key asked
    router: RouterSettings
    server: ServerSettings
    warnings: tuple[str, ...]
    shared: SharedSettings | None = None  # None: no Redis, every process counts alone
    cache: CacheSettings | None = None  # None: no response cache
    otel: OtelSettings | None = None  # None: no traces


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a routing table file; ConfigError names the file and the key."""
    name = str(path)
    try:
        raw = _read(Path(name))
        return parse(raw, name, os.environ if environ is None else environ)
    except ConfigError as exc:
        exc.file = name
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        # A value no check above anticipated: still one line naming the file, not a traceback.
        raise ConfigError("", f"invalid: {exc}", name) from None


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError("", "the file must end in .yaml, .yml or .toml")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read: {exc.strerror or exc}") from None
    try:
        if suffix == ".toml":
            return tomllib.loads(text.decode("utf-8"))
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return yaml.load(text, Loader=loader)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())  # one line: the parsers' messages span several
        raise ConfigError("", f"not valid {suffix[1:].upper()}: {detail}") from None


def parse(raw: Any, name: str, environ: Mapping[str, str]) -> Config:
    """The validated Config for an already-decoded document."""
    if not isinstance(raw, dict):
        raise ConfigError("", "the top level must be a mapping with a model_list")
    warnings: list[str] = []
    for key in raw:
        if key in _FOREIGN_SECTIONS:
            warnings.append(f"{key}: a LiteLLM section this gateway does not use; ignored")
        elif key not in _SECTIONS:
            known = ", ".join(sorted(_SECTIONS))
            raise ConfigError(str(key), f"unknown section (known: {known})")

    env_vars = mapping(raw.get("environment_variables"), "environment_variables")
    # As in LiteLLM, environment_variables are set before anything is read from the environment.
    # An entry without a value (LiteLLM's own examples have `REDIS_PASSWORD:`) sets nothing.
    env = {
        **environ,
        **{
            str(k): env_value(v, f"environment_variables.{k}")
            for k, v in env_vars.items()
            if v is not None
        },
    }

    routing = dict(mapping(raw.get("router_settings"), "router_settings"))
    redis = {k: routing.pop(k) for k in REDIS_KEYS if k in routing}
    router = router_settings(routing, warnings)
    general = mapping(raw.get("general_settings"), "general_settings")
    sidecar_settings = dict(mapping(raw.get("sidecar_settings"), "sidecar_settings"))
    shared = shared_settings(redis, sidecar_settings.pop("shared_state", None), env)
    litellm = mapping(raw.get("litellm_settings"), "litellm_settings")
    cache = cache_settings(litellm, shared, env, warnings)
    keys = all_keys(general, sidecar_settings.pop("keys", None), env, warnings)
    otel = otel_settings(sidecar_settings.pop("otel", None), env)
    server = server_settings(sidecar_settings)

    entries = raw.get("model_list")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("model_list", "must be a non-empty list of models")
    deployments = tuple(
        deployment_of(entry, i, env, router, warnings) for i, entry in enumerate(entries)
    )
    check_fallbacks(router, deployments)
    seen: dict[str, int] = {}
    for i, d in enumerate(deployments):
        if d.id in seen:
            raise ConfigError(
                f"model_list[{i}].model_info.id",
                f"'{d.id}' is already the id of model_list[{seen[d.id]}]",
            )
        seen[d.id] = i
    return Config(
        name, deployments, tuple(keys), router, server, tuple(warnings), shared, cache, otel
    )
