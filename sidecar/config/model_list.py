"""model_list: each entry's litellm_params checked and built into a Deployment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sidecar import providers
from sidecar.config.router_settings import RouterSettings
from sidecar.config.values import is_token, mapping, resolve, seconds, secret
from sidecar.deployment import ConfigError, Deployment, Params, Prices
from sidecar.params import REQUEST_PARAMS
from sidecar.routes import MODEL_ENDPOINTS, ROUTES, Endpoint

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


def deployment_of(
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
    info = mapping(entry.get("model_info"), f"{where}.model_info")
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
    prices = _prices(params, info, where)
    deployment = providers.build(
        str(entry_id),
        group,
        params,
        env,
        router.timeout,
        f"{where}.litellm_params",
        router.stream_timeout,
        _supported(
            info.get("supported_endpoints"), f"{where}.model_info.supported_endpoints", warnings
        ),
        prices,
    )
    unusual = providers.api_base_warning(deployment)
    if unusual is not None:
        warnings.append(f"{where}.litellm_params.api_base: {unusual}")
    return deployment


def _prices(params: Params, info: Mapping[str, Any], where: str) -> Prices | None:
    """LiteLLM's input_cost_per_token and output_cost_per_token (USD), in litellm_params or
    model_info (litellm_params first); None when neither is given."""
    found: dict[str, float] = {}
    for name in PRICE_KEYS:
        value = getattr(params, name)
        at = f"{where}.litellm_params.{name}"
        if value is None and name in info:
            value, at = info[name], f"{where}.model_info.{name}"
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(at, "must be a number of USD per token") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(at, "must be a number of USD per token")
        if not 0 <= value < 1 or value != value:
            raise ConfigError(at, "must be at least 0 and under 1 USD per token")
        found[name] = float(value)
    if not found:
        return None
    return Prices(found.get("input_cost_per_token", 0.0), found.get("output_cost_per_token", 0.0))


def _supported(raw: Any, where: str, warnings: list[str]) -> frozenset[Endpoint] | None:
    """LiteLLM's model_info.supported_endpoints: the paths this deployment serves (with or
    without /v1); None, all that its provider serves. A path this gateway does not route
    (LiteLLM's /v1/images/generations ...) is ignored with a warning, so a LiteLLM table loads;
    /v1/messages brings its count_tokens."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) for p in raw):
        raise ConfigError(where, 'must be a list of paths, like ["/v1/chat/completions"]')
    found = set()
    for path in raw:
        route = ROUTES.get(path.rstrip("/") or "/")
        if route is None or route.endpoint not in MODEL_ENDPOINTS:
            warnings.append(f"{where}: '{path}' is not an endpoint this gateway routes; ignored")
            continue
        found.add(route.endpoint)
        if route.endpoint is Endpoint.MESSAGES:
            found.add(Endpoint.COUNT_TOKENS)
    if not found:
        known = ", ".join(f"/v1{e.value}" for e in Endpoint if e in MODEL_ENDPOINTS)
        raise ConfigError(where, f"names no endpoint this gateway routes ({known})")
    return frozenset(found)


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
    # Numbers; or text, as YAML reads 2e-06 (no dot), which LiteLLM's tables often hold.
    "input_cost_per_token": (int, float, str),
    "output_cost_per_token": (int, float, str),
}
PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token")


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
        value = resolve(value, env, path)
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
    for name, sent in (("extra_body", extra_body), ("defaults", defaults)):
        try:
            orjson.dumps(sent)  # what every request will carry: it must be writable
        except orjson.JSONEncodeError as exc:
            place = f"{where}.extra_body" if name == "extra_body" else where
            raise ConfigError(place, f"holds a value no request body can carry: {exc}") from None
    if "api_key" in fields:
        fields["api_key"] = secret(fields["api_key"], f"{where}.api_key")

    extra_headers = fields.pop("extra_headers", {})
    for name, value in extra_headers.items():
        if not isinstance(value, str) or not is_token(str(name)) or "\r" in value or "\n" in value:
            raise ConfigError(
                f"{where}.extra_headers.{name}", "must be a header name and a string value"
            )
    for key in ("timeout", "stream_timeout"):
        if key in fields:
            fields[key] = seconds(fields[key], f"{where}.{key}")
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


def check_fallbacks(router: RouterSettings, deployments: tuple[Deployment, ...]) -> None:
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
