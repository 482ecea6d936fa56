"""Azure OpenAI: azure/ (chat, completions, embeddings, Responses, audio) and azure_text/
(completions).

`{api_base}/openai/deployments/{deployment}/{endpoint}?api-version={api_version}` with an
`api-key` header (Azure's REST reference); the Responses API is `{api_base}/openai/responses`,
the deployment named by the body's model. The deployment is the part after the prefix; it is
percent-encoded whole, so no model name can reach into the path, the query or a header. Azure
serves no Messages, rerank or tokenize: a deployment of it is never chosen for those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote

from sidecar.deployment import ConfigError, Params
from sidecar.providers.openai import check_base
from sidecar.routes import Endpoint
from sidecar.url import URL

AZURE_ENDPOINTS = (
    Endpoint.CHAT,
    Endpoint.COMPLETIONS,
    Endpoint.EMBEDDINGS,
    Endpoint.RESPONSES,
    Endpoint.TRANSCRIPTIONS,
    Endpoint.TRANSLATIONS,
)


def _build(
    params: Params, env: Mapping[str, str], where: str, endpoints: Iterable[Endpoint]
) -> tuple[dict[Endpoint, URL], dict[str, str]]:
    base_text = params.api_base or env.get("AZURE_API_BASE")
    if not base_text:
        raise ConfigError(f"{where}.api_base", "azure needs api_base (or AZURE_API_BASE)")
    base = check_base(base_text, where)
    version = params.api_version or env.get("AZURE_API_VERSION")
    if not version:
        raise ConfigError(f"{where}.api_version", "azure needs api_version (or AZURE_API_VERSION)")
    key = params.api_key if params.api_key is not None else env.get("AZURE_API_KEY")
    if not key:
        raise ConfigError(f"{where}.api_key", "azure needs api_key (or AZURE_API_KEY)")
    name = quote(params.model, safe="")  # a wildcard's '*' becomes deployment.WILDCARD_IN_PATH
    query = "api-version=" + quote(version, safe="")
    urls = {
        e: URL.parse(
            f"{base}/openai{e.value}?{query}"
            if e is Endpoint.RESPONSES
            else f"{base}/openai/deployments/{name}{e.value}?{query}"
        )
        for e in endpoints
    }
    headers = {"api-key": key}
    headers.update(params.extra_headers)
    return urls, headers


def build_azure(
    params: Params, env: Mapping[str, str], where: str
) -> tuple[dict[Endpoint, URL], dict[str, str]]:
    return _build(params, env, where, AZURE_ENDPOINTS)


def build_azure_text(
    params: Params, env: Mapping[str, str], where: str
) -> tuple[dict[Endpoint, URL], dict[str, str]]:
    return _build(params, env, where, (Endpoint.COMPLETIONS,))
