"""The route table: (method, path) -> endpoint. Matching is pure; handling lives in proxy.py."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Endpoint(enum.Enum):
    """What a path asks for. The value of a model endpoint is the path appended to api_base."""

    # Members are singletons compared by identity: hashing them so too keeps dict and set
    # lookups in C (Enum's own __hash__ is Python code, called several times a request).
    __hash__ = object.__hash__

    CHAT = "/chat/completions"
    COMPLETIONS = "/completions"
    EMBEDDINGS = "/embeddings"
    RESPONSES = "/responses"
    MESSAGES = "/messages"  # Anthropic's format
    COUNT_TOKENS = "/messages/count_tokens"
    RERANK = "/rerank"
    TRANSCRIPTIONS = "/audio/transcriptions"  # multipart/form-data
    TRANSLATIONS = "/audio/translations"
    TOKENIZE = "/tokenize"  # appended to api_base without its /v1 (vLLM, llama.cpp)
    DETOKENIZE = "/detokenize"
    MODELS = "/models"
    MODEL = "/models/{id}"
    LIVELINESS = "/health/liveliness"
    READINESS = "/health/readiness"
    METRICS = "/metrics"


# OpenTelemetry's gen_ai.operation.name of each model endpoint: the conventions' names where
# there is one, else the endpoint's own.
OPERATIONS = {
    e: {
        "CHAT": "chat",
        "COMPLETIONS": "text_completion",
        "EMBEDDINGS": "embeddings",
        "RESPONSES": "chat",
        "MESSAGES": "chat",
    }.get(e.name, e.name.lower())
    for e in Endpoint
}

# Endpoints that carry a model in the body and are forwarded upstream.
MODEL_ENDPOINTS = frozenset(
    {
        Endpoint.CHAT,
        Endpoint.COMPLETIONS,
        Endpoint.EMBEDDINGS,
        Endpoint.RESPONSES,
        Endpoint.MESSAGES,
        Endpoint.COUNT_TOKENS,
        Endpoint.RERANK,
        Endpoint.TRANSCRIPTIONS,
        Endpoint.TRANSLATIONS,
        Endpoint.TOKENIZE,
        Endpoint.DETOKENIZE,
    }
)
# Their bodies are multipart/form-data, not JSON.
FORM_ENDPOINTS = frozenset({Endpoint.TRANSCRIPTIONS, Endpoint.TRANSLATIONS})
# Whose own errors take Anthropic's shape, as the clients of these paths read them.
ANTHROPIC_ENDPOINTS = frozenset({Endpoint.MESSAGES, Endpoint.COUNT_TOKENS})
# They count tokens or turn them to text, and generate nothing: no tokens spent, none counted
# (count_tokens' reply names input_tokens, as a generation's usage does).
UNSPENT_ENDPOINTS = frozenset({Endpoint.COUNT_TOKENS, Endpoint.TOKENIZE, Endpoint.DETOKENIZE})
# Served by the server's root, not under /v1: api_base loses its trailing /v1 for them.
ROOT_ENDPOINTS = frozenset({Endpoint.TOKENIZE, Endpoint.DETOKENIZE})

_ROUTES: tuple[tuple[str, str, Endpoint], ...] = (
    ("POST", "/chat/completions", Endpoint.CHAT),
    ("POST", "/completions", Endpoint.COMPLETIONS),
    ("POST", "/embeddings", Endpoint.EMBEDDINGS),
    ("POST", "/responses", Endpoint.RESPONSES),
    ("POST", "/messages", Endpoint.MESSAGES),
    ("POST", "/messages/count_tokens", Endpoint.COUNT_TOKENS),
    ("POST", "/rerank", Endpoint.RERANK),
    ("POST", "/audio/transcriptions", Endpoint.TRANSCRIPTIONS),
    ("POST", "/audio/translations", Endpoint.TRANSLATIONS),
    ("POST", "/tokenize", Endpoint.TOKENIZE),
    ("POST", "/detokenize", Endpoint.DETOKENIZE),
    ("GET", "/models", Endpoint.MODELS),
)
# Operational paths: not under /v1, and never behind the key, so probes need no secret.
_OPS_ROUTES: tuple[tuple[str, str, Endpoint], ...] = (
    ("GET", "/health/liveliness", Endpoint.LIVELINESS),
    ("GET", "/health/liveliness/", Endpoint.LIVELINESS),
    ("GET", "/health/readiness", Endpoint.READINESS),
    ("GET", "/health/readiness/", Endpoint.READINESS),
    ("GET", "/metrics", Endpoint.METRICS),
    ("GET", "/healthz", Endpoint.LIVELINESS),  # the Kubernetes-style names, as aliases
    ("GET", "/readyz", Endpoint.READINESS),
)


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: Endpoint
    methods: frozenset[str]


class RouteError(Exception):
    """A path that is unknown (404) or a known path asked with the wrong method (405)."""

    def __init__(self, status: int, method: str, path: str, allow: frozenset[str] = frozenset()):
        super().__init__(f"{method} {path}")
        self.status = status
        self.allow = allow


def _build() -> dict[str, Route]:
    table: dict[str, dict[str, Endpoint]] = {}
    for method, path, endpoint in _ROUTES:
        for full in (path, "/v1" + path):
            table.setdefault(full, {})[method] = endpoint
    for method, path, endpoint in _OPS_ROUTES:
        table.setdefault(path, {})[method] = endpoint
    routes = {}
    for path, by_method in table.items():
        (endpoint,) = set(by_method.values())
        routes[path] = Route(endpoint, frozenset(by_method))
    return routes


ROUTES: dict[str, Route] = _build()
# GET /v1/models/{id}: the one route with a parameter; ids may hold '/' (openai/gpt-4o).
MODEL_PREFIXES = ("/v1/models/", "/models/")
_MODEL_ROUTE = Route(Endpoint.MODEL, frozenset({"GET"}))


def model_id(path: str) -> str:
    """The {id} of a GET /v1/models/{id} path."""
    prefix = MODEL_PREFIXES[0] if path.startswith(MODEL_PREFIXES[0]) else MODEL_PREFIXES[1]
    return path[len(prefix) :]


def match(method: str, path: str) -> Endpoint:
    """The endpoint for a request line, or RouteError. HEAD is served where GET is (RFC 9110 9.3.2)."""
    route = ROUTES.get(path)
    if route is None:
        if path.startswith(MODEL_PREFIXES) and not path.endswith("/"):
            route = _MODEL_ROUTE
        else:
            raise RouteError(404, method, path)
    if method in route.methods or (method == "HEAD" and "GET" in route.methods):
        return route.endpoint
    raise RouteError(405, method, path, route.methods)
