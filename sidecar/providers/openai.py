"""The OpenAI-compatible family: openai/, text-completion-openai/, hosted_vllm/, llamafile/.

All of them take the OpenAI routes unchanged at `{api_base}{endpoint}`; they differ in where the
base and the key come from, and whether a key is required.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from sidecar.deployment import ConfigError, Params
from sidecar.routes import MODEL_ENDPOINTS, ROOT_ENDPOINTS, Endpoint
from sidecar.url import URL

Builder = Callable[[Params, Mapping[str, str], str], tuple[dict[Endpoint, URL], dict[str, str]]]

OPENAI_API_BASE = "https://api.openai.com/v1"
LLAMAFILE_API_BASE = "http://127.0.0.1:8080/v1"

ALL_ENDPOINTS = tuple(e for e in Endpoint if e in MODEL_ENDPOINTS)


def check_base(api_base: str, where: str) -> str:
    """api_base without its trailing slash, once it is a URL an upstream can be reached at."""
    try:
        base = URL.parse(api_base.rstrip("/"))
    except (ValueError, UnicodeError):
        raise ConfigError(f"{where}.api_base", "is not a valid URL") from None
    if base.scheme not in ("http", "https") or not base.host:
        raise ConfigError(f"{where}.api_base", "must be an http:// or https:// URL with a host")
    if base.query or base.fragment:
        raise ConfigError(f"{where}.api_base", "must not carry a query or a fragment")
    if base.user is not None or base.password is not None:
        raise ConfigError(
            f"{where}.api_base",
            "must not carry credentials (user:password@): use api_key or extra_headers",
        )
    return str(base)


def endpoint_urls(api_base: str, endpoints: Iterable[Endpoint], where: str) -> dict[Endpoint, URL]:
    """api_base + endpoint path, nothing else added (users end api_base with /v1), but for
    /tokenize and /detokenize, which servers serve at their root: api_base without its /v1."""
    base = check_base(api_base, where)
    root = base.removesuffix("/v1")
    return {e: URL.parse((root if e in ROOT_ENDPOINTS else base) + e.value) for e in endpoints}


def bearer_headers(params: Params, key: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if params.organization:
        headers["OpenAI-Organization"] = params.organization
    headers.update(params.extra_headers)
    return headers


def _openai_key(params: Params, env: Mapping[str, str], where: str) -> str:
    if params.api_key is not None:
        return params.api_key
    key = env.get("OPENAI_API_KEY")
    if key is None:
        raise ConfigError(
            f"{where}.api_key",
            f"no key for '{params.provider}/{params.model}': set api_key or OPENAI_API_KEY; "
            f'for a server that takes no key use hosted_vllm/{params.model} (or api_key: "")',
        )
    return key


def _openai_base(params: Params, env: Mapping[str, str]) -> str:
    return (
        params.api_base
        or env.get("OPENAI_API_BASE")
        or env.get("OPENAI_BASE_URL")
        or (OPENAI_API_BASE)
    )


def build_openai(
    params: Params, env: Mapping[str, str], where: str
) -> tuple[dict[Endpoint, URL], dict[str, str]]:
    key = _openai_key(params, env, where)
    urls = endpoint_urls(_openai_base(params, env), ALL_ENDPOINTS, where)
    return urls, bearer_headers(params, key)


def build_text_completion_openai(
    params: Params, env: Mapping[str, str], where: str
) -> tuple[dict[Endpoint, URL], dict[str, str]]:
    key = _openai_key(params, env, where)
    urls = endpoint_urls(_openai_base(params, env), (Endpoint.COMPLETIONS,), where)
    return urls, bearer_headers(params, key)


def build_hosted_vllm(
    params: Params, env: Mapping[str, str], where: str
) -> tuple[dict[Endpoint, URL], dict[str, str]]:
    base = params.api_base or env.get("HOSTED_VLLM_API_BASE")
    if not base:
        raise ConfigError(
            f"{where}.api_base", "hosted_vllm needs api_base (or HOSTED_VLLM_API_BASE)"
        )
    key = params.api_key if params.api_key is not None else env.get("HOSTED_VLLM_API_KEY")
    return endpoint_urls(base, ALL_ENDPOINTS, where), bearer_headers(params, key)


def build_llamafile(
    params: Params, env: Mapping[str, str], where: str
) -> tuple[dict[Endpoint, URL], dict[str, str]]:
    base = params.api_base or env.get("LLAMAFILE_API_BASE") or LLAMAFILE_API_BASE
    key = params.api_key if params.api_key is not None else env.get("LLAMAFILE_API_KEY")
    return endpoint_urls(base, ALL_ENDPOINTS, where), bearer_headers(params, key)
