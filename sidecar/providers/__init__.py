"""Providers: the prefix of litellm_params.model decides how a deployment reaches its upstream.

Each provider family turns validated Params into a Deployment: URLs, headers and defaults are
computed here, once, at load time, so the hot path only looks them up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sidecar.deployment import WILDCARD_IN_PATH, ConfigError, Deployment, Params, Prices
from sidecar.headers import request_head
from sidecar.origin import Origin
from sidecar.params import BY_ENDPOINT
from sidecar.providers import azure, openai
from sidecar.routes import FORM_ENDPOINTS, ROOT_ENDPOINTS, Endpoint
from sidecar.url import URL

BUILDERS: dict[str, openai.Builder] = {
    "openai": openai.build_openai,
    "text-completion-openai": openai.build_text_completion_openai,
    "hosted_vllm": openai.build_hosted_vllm,
    "llamafile": openai.build_llamafile,
    "azure": azure.build_azure,
    "azure_text": azure.build_azure_text,
}
KNOWN = tuple(BUILDERS)
MOCK_ENDPOINTS = frozenset({Endpoint.CHAT, Endpoint.COMPLETIONS})  # what mock_response answers
# Text-completion upstreams: a chat call is served by their /completions, translated both ways.
CHAT_OVER_TEXT = frozenset({"text-completion-openai", "azure_text"})
# Providers whose URL path holds the model name (the rest carry it in the body).
MODEL_IN_PATH = frozenset({"azure", "azure_text"})

# Names LiteLLM resolves to OpenAI without a prefix ("model: gpt-4o" in its docs' examples).
_OPENAI_BARE_PREFIXES = ("gpt-", "chatgpt-", "o1", "o3", "o4", "text-embedding-", "ft:gpt-")
_OPENAI_BARE_NAMES = frozenset({"davinci-002", "babbage-002"})


def split_model(model: str, where: str) -> tuple[str, str]:
    """'hosted_vllm/facebook/opt-125m' -> ('hosted_vllm', 'facebook/opt-125m')."""
    provider, sep, name = model.partition("/")
    if sep and provider in KNOWN:
        if not name:
            raise ConfigError(where, f"no model name after '{provider}/'")
        return provider, name
    if model.startswith(_OPENAI_BARE_PREFIXES) or model in _OPENAI_BARE_NAMES:
        return "openai", model
    if sep:
        raise ConfigError(where, f"unknown provider '{provider}' (known: {', '.join(KNOWN)})")
    raise ConfigError(
        where,
        f"'{model}' names no provider: write '<provider>/{model}' (known: {', '.join(KNOWN)})",
    )


def build(
    entry_id: str,
    group: str,
    params: Params,
    env: Mapping[str, str],
    default_timeout: float,
    where: str,
    default_stream_timeout: float | None = None,
    supported: frozenset[Endpoint] | None = None,
    prices: Prices | None = None,
) -> Deployment:
    """Validated params -> a Deployment, or ConfigError naming the key at fault. `supported`:
    model_info.supported_endpoints, the endpoints it may be chosen for (None: all it serves)."""
    if params.mock_response is not None:
        urls: Mapping[Endpoint, URL] = {}
        headers: Mapping[str, str] = {}
    else:
        urls, headers = BUILDERS[params.provider](params, env, where)
        for name, value in headers.items():
            if any(c in value for c in "\r\n\0"):
                key = (
                    "api_key"
                    if name.lower() in ("authorization", "api-key")
                    else f"extra_headers.{name}"
                )
                raise ConfigError(f"{where}.{key}", "must not contain line breaks or NUL")
        if params.provider in CHAT_OVER_TEXT:
            urls = {**urls, Endpoint.CHAT: urls[Endpoint.COMPLETIONS]}
        if supported is not None:
            missing = [f"/v1{e.value}" for e in supported if e not in urls]
            if missing:
                raise ConfigError(
                    where.replace("litellm_params", "model_info.supported_endpoints"),
                    f"{params.provider}/ does not serve {', '.join(sorted(missing))}",
                )
            urls = {e: url for e, url in urls.items() if e in supported}
    origin = None
    heads: dict[Endpoint, bytes] = {}
    model_slots: dict[Endpoint, int] = {}
    if urls:
        first = next(iter(urls.values()))
        origin = Origin(first.host, first.port, first.scheme == "https")
        for endpoint, url in urls.items():
            # A form's Content-Type names its boundary: it is the client's, per request.
            content_type = None if endpoint in FORM_ENDPOINTS else "application/json"
            head = request_head("POST", url.raw_path_qs, origin.authority, headers, content_type)
            heads[endpoint] = head
            if (
                params.provider in MODEL_IN_PATH
                and "*" in params.model
                and WILDCARD_IN_PATH in head
            ):
                # A wildcard deployment name is filled in per request, at this offset.
                model_slots[endpoint] = head.index(WILDCARD_IN_PATH)
    # Known parameters reach only the endpoints that take them; extra_body reaches all, as is.
    defaults = {
        endpoint: {
            **params.extra_body,
            **{k: v for k, v in params.defaults.items() if k in accepted},
        }
        for endpoint, accepted in BY_ENDPOINT.items()
    }
    timeout = params.timeout if params.timeout is not None else default_timeout
    return Deployment(
        id=entry_id,
        group=group,
        provider=params.provider,
        model=params.model,
        urls=urls,
        headers=headers,
        defaults=defaults,
        timeout=timeout,
        stream_timeout=(
            params.stream_timeout if params.stream_timeout is not None else default_stream_timeout
        ),
        origin=origin,
        secrets=tuple(_secrets(headers)),
        heads=heads,
        model_slots=model_slots,
        chat_over_text=params.provider in CHAT_OVER_TEXT,
        mock_response=params.mock_response,
        supports_system_message=params.supports_system_message is not False,
        rpm=params.rpm,
        tpm=params.tpm,
        weight=params.weight,
        max_retries=params.max_retries,
        endpoints=MOCK_ENDPOINTS if params.mock_response is not None else frozenset(heads),
        prices=prices,
        stream_usage=takes_stream_options(params, env),
    )


def takes_stream_options(params: Params, env: Mapping[str, str]) -> bool:
    """Azure refuses stream_options (400) before api-version 2024-08-01-preview; every other
    upstream takes it (OpenAI, vLLM, llama.cpp's server, LiteLLM)."""
    if params.provider not in MODEL_IN_PATH:
        return True
    version = params.api_version or env.get("AZURE_API_VERSION") or ""
    dated = re.match(r"\d{4}-\d{2}-\d{2}", version)
    return dated is None or dated.group() >= "2024-08-01"


MIN_SECRET = 4  # characters: a shorter value would blank common text, and is no real key
# Header names that carry credentials: the deployment's key, and extra_headers such as
# x-api-key, x-auth-token or a signature. Other extra_headers (x-project: 2024) are no secret.
_CREDENTIAL_NAME = re.compile(
    r"authorization|api-key|key|token|secret|auth|passw|cookie|signature", re.I
)


def _secrets(headers: Mapping[str, str]) -> list[str]:
    """What an upstream could quote back of a deployment's credentials: each such header's
    value, and the token of a Bearer credential on its own. The longest first, so that a
    token inside a longer value is blanked with it."""
    found = set()
    for name, value in headers.items():
        if not _CREDENTIAL_NAME.search(name):
            continue
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer":
            found.add(token)
        found.add(value)
    return sorted((v for v in found if len(v) >= MIN_SECRET), key=len, reverse=True)


def api_base_warning(deployment: Deployment) -> str | None:
    """OpenAI-style upstreams take the endpoint path appended to api_base as it is, and serve
    their routes under /v1: a base without it (http://vllm:8000) sends every call to a path the
    server does not have (/chat/completions). A warning, not an error: some bases differ."""
    if deployment.provider in MODEL_IN_PATH:
        return None  # Azure's paths are built here, not appended
    for endpoint, url in deployment.urls.items():
        if endpoint in ROOT_ENDPOINTS or not url.path.endswith(endpoint.value):
            continue  # chat served by /completions (text-completion-openai/)
        base = url.path[: -len(endpoint.value)]
        if not base.rstrip("/").endswith("/v1"):
            return (
                f"its path '{base or '/'}' does not end in /v1, so calls go to "
                f"'{base}{endpoint.value}'; OpenAI-compatible servers serve '/v1{endpoint.value}'"
            )
    return None
