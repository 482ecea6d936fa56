"""The route table and the model table: pure lookups, tested as tables."""

from __future__ import annotations

import pytest

from sidecar import config as configs
from sidecar.routes import Endpoint, RouteError, match
from sidecar.table import Table


@pytest.mark.parametrize(
    ("method", "path", "endpoint"),
    [
        ("POST", "/v1/chat/completions", Endpoint.CHAT),
        ("POST", "/chat/completions", Endpoint.CHAT),
        ("POST", "/v1/completions", Endpoint.COMPLETIONS),
        ("POST", "/completions", Endpoint.COMPLETIONS),
        ("POST", "/v1/embeddings", Endpoint.EMBEDDINGS),
        ("POST", "/embeddings", Endpoint.EMBEDDINGS),
        ("GET", "/v1/models", Endpoint.MODELS),
        ("GET", "/models", Endpoint.MODELS),
        ("HEAD", "/models", Endpoint.MODELS),
        ("GET", "/health/liveliness", Endpoint.LIVELINESS),
        ("GET", "/health/readiness", Endpoint.READINESS),
        ("GET", "/metrics", Endpoint.METRICS),
    ],
)
def test_match(method: str, path: str, endpoint: Endpoint) -> None:
    assert match(method, path) is endpoint


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/v1/chat/completions", 405, {"POST"}),
        ("DELETE", "/v1/models", 405, {"GET"}),
        ("POST", "/v1/health/liveliness", 404, set()),
        ("POST", "/v2/chat/completions", 404, set()),
        ("POST", "/v1/chat/completions/", 404, set()),
        ("GET", "/", 404, set()),
    ],
)
def test_no_match(method: str, path: str, status: int, allow: set[str]) -> None:
    with pytest.raises(RouteError) as caught:
        match(method, path)
    assert caught.value.status == status
    assert caught.value.allow == allow


def table(*groups: tuple[str, str]) -> Table:
    doc = {
        "model_list": [
            {"model_name": name, "litellm_params": {"model": model, "api_base": "http://u/v1"}}
            for name, model in groups
        ]
    }
    return Table(configs.parse(doc, "t.yaml", {}).deployments)


def test_exact_names_win_over_patterns() -> None:
    t = table(("*", "hosted_vllm/*"), ("gpt-*", "hosted_vllm/g-*"), ("gpt-4o", "hosted_vllm/exact"))
    found = t.lookup("gpt-4o")
    assert found is not None and found.wildcard is None
    assert found.group.deployments[0].upstream_model(found.wildcard) == "exact"
    found = t.lookup("gpt-3.5")
    assert found is not None and found.group.name == "gpt-*"
    assert found.group.deployments[0].upstream_model(found.wildcard) == "g-3.5"
    found = t.lookup("llama/3")
    assert (
        found is not None and found.group.deployments[0].upstream_model(found.wildcard) == "llama/3"
    )


def test_no_pattern_no_match() -> None:
    t = table(("a", "hosted_vllm/a"), ("openai/*", "hosted_vllm/*"))
    assert t.lookup("b") is None
    assert t.lookup("openai") is None
    assert t.lookup("openai/") is None  # a '*' stands for at least one character
    found = t.lookup("openai/x")
    assert found is not None and found.wildcard == "x"
