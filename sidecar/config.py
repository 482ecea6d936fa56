"""Load the routing table (YAML or TOML, LiteLLM's schema) into frozen, validated settings.

Everything is checked here, before any socket opens; every error names the file and the key path.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar import auth, providers
from sidecar.auth import ClientKey
from sidecar.deployment import ConfigError, Deployment, Params
from sidecar.params import REQUEST_PARAMS

ENV_PREFIX = "os.environ/"

DEFAULT_TIMEOUT = 600.0  # seconds; LiteLLM's default request timeout
DEFAULT_RETRIES = 2
DEFAULT_ALLOWED_FAILS = 3
DEFAULT_COOLDOWN = 5.0  # seconds
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_DRAIN_TIMEOUT = 30.0

# LiteLLM sections we accept so that its configs load, and what we say about them.
_FOREIGN_SECTIONS = frozenset(
    {
        "litellm_settings",
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
    }
)

# litellm_params keys LiteLLM knows that change nothing here (costs, provider-specific knobs).
_IGNORED_PARAMS = frozenset(
    {
        "custom_llm_provider",
        "input_cost_per_token",
        "output_cost_per_token",
        "input_cost_per_second",
        "output_cost_per_second",
        "region_name",
        "drop_params",
        "use_in_pass_through",
        "use_litellm_proxy",
        "merge_reasoning_content_in_choices",
        "max_parallel_requests",
        "order",
        "tags",
        "litellm_credential_name",
        "configurable_clientside_auth_params",
        "model_info",
        "cache_control_injection_points",
        "additional_drop_params",
    }
)

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


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """sidecar_settings: ours. Command-line flags win over these."""

    host: str = "0.0.0.0"
    port: int = 4000
    workers: int = 1  # "auto" in the file: one per core
    uds: str | None = None  # also listen on this Unix socket path; None: TCP only
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # a larger body gets 413; 0 means no limit
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT  # seconds in-flight requests get on SIGTERM
    access_log: bool = True  # one JSON line per request on stdout
    max_connections: int = 0  # client connections held at once; more get 503; 0: no limit
    max_in_flight: int = 0  # model requests served at once; more get 503; 0: no limit
    body_timeout: float = 60.0  # seconds a client may take to send its body; then 408
    reload_interval: float = 1.0  # seconds between checks of the file for changes; 0: SIGHUP only
    # A second listener for health and metrics only, never behind a key or the connection
    # limit: what a kubelet probes from the node while the API stays on the pod's loopback.
    # None: no such listener (health and metrics are on the API's listener too, always).
    admin_port: int | None = None
    admin_host: str = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    deployments: tuple[Deployment, ...]
    keys: tuple[ClientKey, ...]  # the master key first when there is one; empty: no key asked
    router: RouterSettings
    server: ServerSettings
    warnings: tuple[str, ...]


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

    env_vars = _mapping(raw.get("environment_variables"), "environment_variables")
    # As in LiteLLM, environment_variables are set before anything is read from the environment.
    # An entry without a value (LiteLLM's own examples have `REDIS_PASSWORD:`) sets nothing.
    env = {
        **environ,
        **{
            str(k): _env_value(v, f"environment_variables.{k}")
            for k, v in env_vars.items()
            if v is not None
        },
    }

    router = _router_settings(_mapping(raw.get("router_settings"), "router_settings"), warnings)
    general = _mapping(raw.get("general_settings"), "general_settings")
    keys: list[ClientKey] = []
    for key, value in general.items():
        if key == "master_key":
            if value is not None:
                master_key = _secret(
                    _resolve(value, env, "general_settings.master_key"),
                    "general_settings.master_key",
                )
                if not master_key:
                    raise ConfigError("general_settings.master_key", "must not be empty")
                keys.append(ClientKey("master", auth.digest(master_key)))
        else:
            warnings.append(f"general_settings.{key}: not used by this gateway; ignored")
    sidecar_settings = dict(_mapping(raw.get("sidecar_settings"), "sidecar_settings"))
    keys += _client_keys(sidecar_settings.pop("keys", None), env)
    seen_keys: dict[bytes, str] = {}
    for client_key in keys:
        if client_key.digest in seen_keys:
            raise ConfigError(
                "sidecar_settings.keys",
                f"'{client_key.name}' has the same secret as '{seen_keys[client_key.digest]}'",
            )
        seen_keys[client_key.digest] = client_key.name
    server = _server_settings(sidecar_settings)

    entries = raw.get("model_list")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("model_list", "must be a non-empty list of models")
    deployments = tuple(
        _deployment(entry, i, env, router, warnings) for i, entry in enumerate(entries)
    )
    _check_fallbacks(router, deployments)
    seen: dict[str, int] = {}
    for i, d in enumerate(deployments):
        if d.id in seen:
            raise ConfigError(
                f"model_list[{i}].model_info.id",
                f"'{d.id}' is already the id of model_list[{seen[d.id]}]",
            )
        seen[d.id] = i
    return Config(name, deployments, tuple(keys), router, server, tuple(warnings))


def _deployment(
    entry: Any, index: int, env: Mapping[str, str], router: RouterSettings, warnings: list[str]
) -> Deployment:
    where = f"model_list[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(where, "must be a mapping with model_name and litellm_params")
    group = entry.get("model_name")
    if not isinstance(group, str) or not group:
        raise ConfigError(f"{where}.model_name", "must be a non-empty string")
    if group.count("*") > 1:
        raise ConfigError(f"{where}.model_name", "may hold at most one '*'")
    known = ("model_name", "litellm_params", "model_info", "rpm", "tpm")
    for key in entry:
        if key not in known:
            raise ConfigError(f"{where}.{key}", f"unknown key (known: {', '.join(known)})")
    info = _mapping(entry.get("model_info"), f"{where}.model_info")
    litellm_params = entry.get("litellm_params")
    if isinstance(litellm_params, dict):
        # LiteLLM's Router also takes rpm/tpm beside litellm_params; inside wins.
        litellm_params = {
            **{k: entry[k] for k in ("rpm", "tpm") if k in entry},
            **litellm_params,
        }
    params = _params(litellm_params, f"{where}.litellm_params", env, warnings)
    if params.model.count("*") > 1 or ("*" in params.model and "*" not in group):
        raise ConfigError(
            f"{where}.litellm_params.model",
            "may hold a '*' only when model_name holds one, and at most one",
        )
    entry_id = info.get("id")
    if entry_id is None:
        entry_id = f"{params.provider}/{params.model}#{index}"
    elif not isinstance(entry_id, str | int) or isinstance(entry_id, bool):
        raise ConfigError(f"{where}.model_info.id", "must be a string")
    deployment = providers.build(
        str(entry_id),
        group,
        params,
        env,
        router.timeout,
        f"{where}.litellm_params",
        router.stream_timeout,
    )
    unusual = providers.api_base_warning(deployment)
    if unusual is not None:
        warnings.append(f"{where}.litellm_params.api_base: {unusual}")
    return deployment


_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "api_base": (str,),
    "base_url": (str,),
    "api_key": (str,),
    "api_version": (str,),
    "organization": (str,),
    "timeout": (int, float, str),
    "stream_timeout": (int, float, str),
    "rpm": (int,),
    "tpm": (int,),
    "weight": (int, float),
    "max_retries": (int,),
    "num_retries": (int,),
    "mock_response": (str,),
    "supports_system_message": (bool,),
    "extra_headers": (dict,),
    "extra_body": (dict,),
}


def _params(raw: Any, where: str, env: Mapping[str, str], warnings: list[str]) -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a mapping with at least `model`")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{where}.model", "must be a string like 'openai/<model name>'")
    provider, upstream = providers.split_model(model, f"{where}.model")
    fields: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "model":
            continue
        path = f"{where}.{key}"
        value = _resolve(value, env, path)
        if key in _PARAM_TYPES:
            if value is None:
                continue
            if not isinstance(value, _PARAM_TYPES[key]) or (
                isinstance(value, bool) and bool not in _PARAM_TYPES[key]
            ):
                names = " or ".join(t.__name__ for t in _PARAM_TYPES[key])
                raise ConfigError(path, f"must be {names}, not {type(value).__name__}")
            fields[key] = value
        elif key in REQUEST_PARAMS:
            defaults[key] = value
        elif key in _IGNORED_PARAMS:
            warnings.append(f"{path}: not used by this gateway; ignored")
        else:
            raise ConfigError(
                path, "unknown key: neither a LiteLLM setting nor an OpenAI request parameter"
            )
    extra_body = {str(k): v for k, v in fields.pop("extra_body", {}).items()}
    if "api_key" in fields:
        fields["api_key"] = _secret(fields["api_key"], f"{where}.api_key")

    extra_headers = fields.pop("extra_headers", {})
    for name, value in extra_headers.items():
        if not isinstance(value, str) or not _is_token(str(name)) or "\r" in value or "\n" in value:
            raise ConfigError(
                f"{where}.extra_headers.{name}", "must be a header name and a string value"
            )
    for key in ("timeout", "stream_timeout"):
        if key in fields:
            fields[key] = _seconds(fields[key], f"{where}.{key}")
    for key in ("rpm", "tpm", "max_retries", "num_retries"):
        if key in fields and fields[key] < 0:
            raise ConfigError(f"{where}.{key}", "must not be negative")
    if "weight" in fields and fields["weight"] <= 0:
        raise ConfigError(f"{where}.weight", "must be positive")
    base_url = fields.pop("base_url", None)
    fields.setdefault("api_base", base_url)
    retries = fields.pop("num_retries", None)
    fields.setdefault("max_retries", retries)
    return Params(
        provider=provider,
        model=upstream,
        extra_headers={str(k): v for k, v in extra_headers.items()},
        defaults=defaults,
        extra_body=extra_body,
        **fields,
    )


def _check_fallbacks(router: RouterSettings, deployments: tuple[Deployment, ...]) -> None:
    """Every group a fallback names must be one the table routes."""
    from sidecar.table import Table  # the table is built from deployments: here, only to check

    table = Table(deployments)
    named = [
        (f"router_settings.fallbacks.{g}", n) for g, ns in router.fallbacks.items() for n in ns
    ]
    named += [("router_settings.default_fallbacks", n) for n in router.default_fallbacks]
    for where, name in named:
        if table.lookup(name) is None:
            raise ConfigError(where, f"'{name}' is no model of the table")


def _client_keys(raw: Any, env: Mapping[str, str]) -> list[ClientKey]:
    """sidecar_settings.keys: [{name, key, models?, rpm?, tpm?}, ...]."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(
            "sidecar_settings.keys", "must be a list of {name, key, models, rpm, tpm}"
        )
    keys = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"sidecar_settings.keys[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, "must be a mapping with name and key")
        for field_name in item:
            if field_name not in ("name", "key", "models", "rpm", "tpm"):
                raise ConfigError(
                    f"{where}.{field_name}", "unknown key (known: name, key, models, rpm, tpm)"
                )
        name = item.get("name")
        if not isinstance(name, str) or not name or name == "master" or name in names:
            raise ConfigError(f"{where}.name", "must be a unique name other than 'master'")
        names.add(name)
        secret = _secret(_resolve(item.get("key"), env, f"{where}.key"), f"{where}.key")
        if len(secret) < 8:
            raise ConfigError(f"{where}.key", "must be at least 8 characters")
        models = item.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
        ):
            raise ConfigError(f"{where}.models", "must be a list of model names ('*' allowed)")
        limits = {}
        for limit in ("rpm", "tpm"):
            value = item.get(limit)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ConfigError(f"{where}.{limit}", "must be a positive whole number")
            limits[limit] = value
        keys.append(
            ClientKey(
                name,
                auth.digest(secret),
                None if models is None else auth.patterns(models),
                limits["rpm"],
                limits["tpm"],
                tuple(models or ()),
            )
        )
    return keys


def _router_settings(raw: Mapping[str, Any], warnings: list[str]) -> RouterSettings:
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
            values[key] = _seconds(values[key], f"router_settings.{key}")
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


def _server_settings(raw: Mapping[str, Any]) -> ServerSettings:
    values: dict[str, Any] = {}
    types: dict[str, tuple[type, ...]] = {
        "host": (str,),
        "port": (int,),
        "workers": (int,),
        "uds": (str,),
        "max_request_bytes": (int,),
        "drain_timeout": (int, float),
        "access_log": (bool,),
        "reload_interval": (int, float),
        "max_connections": (int,),
        "max_in_flight": (int,),
        "body_timeout": (int, float),
        "admin_port": (int,),
        "admin_host": (str,),
    }
    for key, value in raw.items():
        path = f"sidecar_settings.{key}"
        if key not in types:
            raise ConfigError(path, f"unknown key (known: {', '.join(types)})")
        if key == "workers" and value == "auto":
            value = workers_auto()
        if not isinstance(value, types[key]) or (
            isinstance(value, bool) and bool not in types[key]
        ):
            raise ConfigError(path, f"must be {types[key][0].__name__}")
        values[key] = value
    for name in ("reload_interval", "max_connections", "max_in_flight"):
        if values.get(name, 0) < 0:
            raise ConfigError(f"sidecar_settings.{name}", "must not be negative")
    if "body_timeout" in values:
        values["body_timeout"] = _seconds(values["body_timeout"], "sidecar_settings.body_timeout")
    for name in ("port", "admin_port"):
        if not 0 <= values.get(name, 0) <= 65535:
            raise ConfigError(f"sidecar_settings.{name}", "must be 0..65535")
    if values.get("admin_port") not in (None, 0) and values["admin_port"] == values.get(
        "port", 4000
    ):
        # With workers both listeners would join one SO_REUSEPORT group: the kernel would
        # send API calls to the admin listener, which answers them 404.
        raise ConfigError("sidecar_settings.admin_port", "must differ from port")
    if values.get("workers", 1) < 1:
        raise ConfigError("sidecar_settings.workers", "must be at least 1")
    if values.get("max_request_bytes", 0) < 0:
        raise ConfigError("sidecar_settings.max_request_bytes", "must not be negative")
    if values.get("drain_timeout", 0) < 0:
        raise ConfigError("sidecar_settings.drain_timeout", "must not be negative")
    return ServerSettings(**values)


# What a running process cannot change without a restart: its sockets and its processes.
_LISTENING = ("host", "port", "workers", "uds", "admin_port", "admin_host")


def restart_needed(old: ServerSettings, new: ServerSettings) -> list[str]:
    """The sidecar_settings a reload changed that take effect only on restart."""
    return [f"sidecar_settings.{k}" for k in _LISTENING if getattr(old, k) != getattr(new, k)]


def workers_auto() -> int:
    """One worker per core this process may use: the cores it may run on, and no more than its
    container's CPU limit (cgroup v2 `cpu.max`), which Kubernetes sets from `limits.cpu`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _resolve(value: Any, env: Mapping[str, str], where: str) -> Any:
    """Replace os.environ/NAME strings, at any depth, by the variable's value."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        if name not in env:
            raise ConfigError(where, f"environment variable {name} is not set")
        return env[name]
    if isinstance(value, dict):
        return {k: _resolve(v, env, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(where, "must be a mapping")
    return value


def _secret(value: Any, where: str) -> str:
    """A key, without the surrounding white space a file-mounted Secret tends to end with."""
    if not isinstance(value, str):
        raise ConfigError(where, f"must be a string, not {type(value).__name__}")
    key: str = value.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ConfigError(where, "must not contain control characters")
    return key


def _env_value(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(where, "must be a string")
    return str(value)


def _seconds(value: Any, where: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(where, f"must be a number of seconds, not {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(where, "must be a positive number of seconds")
    return seconds


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _is_token(name: str) -> bool:
    """An HTTP field name (RFC 9110 5.1)."""
    return bool(name) and all(c in _TOKEN_CHARS for c in name)
