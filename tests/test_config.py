"""The routing table file: YAML and TOML alike, validated up front, errors naming file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar import config as configs
from sidecar.deployment import ConfigError
from sidecar.routes import Endpoint

YAML = """
model_list:
  - model_name: mistral
    litellm_params:
      model: hosted_vllm/mistralai/Mistral-7B
      api_base: http://vllm:8000/v1/
      api_key: os.environ/VLLM_KEY
      max_tokens: 256
      timeout: 30
      extra_headers: {X-Team: search}
    model_info:
      id: vllm-a
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: ""
router_settings:
  timeout: 90
general_settings:
  master_key: sk-master
sidecar_settings:
  port: 4100
litellm_settings:
  drop_params: true
"""

TOML = """
[[model_list]]
model_name = "mistral"
model_info = { id = "vllm-a" }
[model_list.litellm_params]
model = "hosted_vllm/mistralai/Mistral-7B"
api_base = "http://vllm:8000/v1/"
api_key = "os.environ/VLLM_KEY"
max_tokens = 256
timeout = 30
extra_headers = { X-Team = "search" }

[[model_list]]
model_name = "gpt-4o"
[model_list.litellm_params]
model = "openai/gpt-4o"
api_key = ""

[router_settings]
timeout = 90
[general_settings]
master_key = "sk-master"
[sidecar_settings]
port = 4100
[litellm_settings]
drop_params = true
"""


def load(
    tmp_path: Path, text: str, suffix: str = ".yaml", env: dict[str, str] | None = None
) -> configs.Config:
    path = tmp_path / f"c{suffix}"
    path.write_text(text)
    return configs.load(path, environ={"VLLM_KEY": "k-1"} if env is None else env)


def test_yaml_and_toml_mean_the_same(tmp_path: Path) -> None:
    a, b = load(tmp_path, YAML), load(tmp_path, TOML, ".toml")
    assert a.deployments == b.deployments
    assert (a.keys, a.server, a.router) == (b.keys, b.server, b.router)
    assert [k.name for k in a.keys] == ["master"]
    mistral, gpt = a.deployments
    assert mistral.id == "vllm-a"
    assert str(mistral.urls[Endpoint.CHAT]) == "http://vllm:8000/v1/chat/completions"
    assert mistral.headers == {"Authorization": "Bearer k-1", "X-Team": "search"}
    assert mistral.defaults[Endpoint.CHAT] == {"max_tokens": 256}
    assert mistral.defaults[Endpoint.EMBEDDINGS] == {}
    assert mistral.timeout == 30
    assert mistral.heads[Endpoint.CHAT].startswith(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: vllm:8000\r\n"
    )
    assert gpt.headers == {}  # api_key "" sends no key
    assert str(gpt.urls[Endpoint.EMBEDDINGS]) == "https://api.openai.com/v1/embeddings"
    assert gpt.timeout == 90  # router_settings.timeout
    assert a.server.port == 4100
    assert any("litellm_settings" in w for w in a.warnings)


def test_provider_environment_fallbacks(tmp_path: Path) -> None:
    text = """
model_list:
  - model_name: a
    litellm_params: {model: gpt-4o-mini}
  - model_name: b
    litellm_params: {model: hosted_vllm/x}
  - model_name: c
    litellm_params: {model: llamafile/y}
"""
    env = {"OPENAI_API_KEY": "sk-o", "HOSTED_VLLM_API_BASE": "http://v:1/v1"}
    a, b, c = load(tmp_path, text, env=env).deployments
    assert (a.provider, a.model, a.headers) == (
        "openai",
        "gpt-4o-mini",
        {"Authorization": "Bearer sk-o"},
    )
    assert str(b.urls[Endpoint.COMPLETIONS]) == "http://v:1/v1/completions" and b.headers == {}
    assert str(c.urls[Endpoint.CHAT]) == "http://127.0.0.1:8080/v1/chat/completions"


def test_text_completion_openai_serves_completions(tmp_path: Path) -> None:
    text = "model_list:\n  - model_name: t\n    litellm_params: {model: text-completion-openai/i, api_key: k}\n"
    (d,) = load(tmp_path, text).deployments
    assert set(d.urls) == {Endpoint.COMPLETIONS, Endpoint.CHAT}  # chat through /completions
    assert d.urls[Endpoint.CHAT] == d.urls[Endpoint.COMPLETIONS] and d.chat_over_text


BASE = "model_list:\n  - model_name: m\n    litellm_params:\n"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            BASE + "      model: opnai/gpt-4o\n",
            "model_list[0].litellm_params.model",
            "unknown provider 'opnai' (known: openai, text-completion-openai, hosted_vllm",
        ),
        (
            BASE + "      model: mistral\n",
            "model_list[0].litellm_params.model",
            "names no provider",
        ),
        (
            BASE + "      model: openai/gpt-4o\n",
            "model_list[0].litellm_params.api_key",
            "hosted_vllm/gpt-4o",
        ),
        (
            BASE + "      model: openai/x\n      api_key: os.environ/NOPE\n",
            "model_list[0].litellm_params.api_key",
            "environment variable NOPE is not set",
        ),
        (
            BASE + "      model: hosted_vllm/x\n",
            "model_list[0].litellm_params.api_base",
            "HOSTED_VLLM_API_BASE",
        ),
        (
            BASE + "      model: hosted_vllm/x\n      api_base: vllm:8000\n",
            "model_list[0].litellm_params.api_base",
            "http",
        ),
        (
            BASE
            + "      model: hosted_vllm/x\n      api_base: http://v/v1\n      tempreature: 1\n",
            "model_list[0].litellm_params.tempreature",
            "unknown key",
        ),
        (
            BASE + "      model: hosted_vllm/x\n      api_base: http://v/v1\n      timeout: soon\n",
            "model_list[0].litellm_params.timeout",
            "seconds",
        ),
        (
            BASE + "      model: hosted_vllm/x\n      api_base: http://v/v1\n      rpm: many\n",
            "model_list[0].litellm_params.rpm",
            "must be int",
        ),
        (
            BASE + "      model: azure/x\n",
            "model_list[0].litellm_params.api_base",
            "AZURE_API_BASE",
        ),
        (
            BASE + "      model: azure/x\n      api_base: https://a.example\n",
            "model_list[0].litellm_params.api_version",
            "AZURE_API_VERSION",
        ),
        (
            BASE
            + "      model: azure/x\n      api_base: https://a.example\n      api_version: v\n",
            "model_list[0].litellm_params.api_key",
            "AZURE_API_KEY",
        ),
        ("model_list: []\n", "model_list", "non-empty"),
        (
            "model_list:\n  - litellm_params: {model: openai/x}\n",
            "model_list[0].model_name",
            "string",
        ),
        ("model_list:\n  - model_name: m\n", "model_list[0].litellm_params", "mapping"),
        ("model_lst: []\n", "model_lst", "unknown section"),
        (
            BASE + "      model: hosted_vllm/x\n      api_base: http://v/v1\nrouter_settings:\n"
            "  routing_strategy: fastest\n",
            "router_settings.routing_strategy",
            "unknown strategy",
        ),
        (
            BASE
            + "      model: hosted_vllm/x\n      api_base: http://v/v1\nsidecar_settings:\n  prot: 1\n",
            "sidecar_settings.prot",
            "unknown key",
        ),
        (
            BASE + "      model: hosted_vllm/x\n      api_base: http://v/v1\nsidecar_settings:\n"
            "  port: 4100\n  admin_port: 4100\n",
            "sidecar_settings.admin_port",
            "must differ from port",
        ),
        (
            BASE + "      model: hosted_vllm/x\n      api_base: http://v/v1\n"
            "      extra_body: {seed: 123456789012345678901234567890}\n",
            "model_list[0].litellm_params.extra_body",
            "no request body can carry",
        ),
        (
            BASE + "      model: hosted_vllm/x\n      api_base: http://v/v1\ngeneral_settings:\n"
            "  master_key: os.environ/MK\n",
            "general_settings.master_key",
            "MK is not set",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env={})
    assert caught.value.where == where
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{tmp_path / 'c.yaml'}: {where}: ")


def test_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(tmp_path, "model_list: [\n")
    with pytest.raises(ConfigError, match="must end in"):
        load(tmp_path, "{}", ".json")


def test_mock_needs_no_key(tmp_path: Path) -> None:
    text = BASE + "      model: openai/gpt-4o\n      mock_response: hi\n"
    (d,) = load(tmp_path, text, env={}).deployments
    assert d.mock_response == "hi" and d.headers == {}


def test_environment_variables_section(tmp_path: Path) -> None:
    text = (
        BASE
        + "      model: openai/x\n      api_key: os.environ/K\nenvironment_variables:\n  K: from-file\n"
    )
    (d,) = load(tmp_path, text, env={}).deployments
    assert d.headers["Authorization"] == "Bearer from-file"


def test_litellm_router_style_entries_load(tmp_path: Path) -> None:
    text = """
model_list:
  - model_name: m
    litellm_params: {model: hosted_vllm/x, api_base: "http://v/v1", api_key: os.environ/K}
    rpm: 60
    tpm: 1000
environment_variables:
  REDIS_PASSWORD:
router_settings:
  routing_strategy: usage-based-routing-v2
  num_retries: 2
"""
    config = load(tmp_path, text, env={"K": "  sk-with-newline\n"})
    (d,) = config.deployments
    assert d.rpm == 60 and d.tpm == 1000
    assert d.headers["Authorization"] == "Bearer sk-with-newline"  # a Secret file's newline goes
    assert config.router.num_retries == 2
    assert config.warnings == (
        "router_settings.routing_strategy: parsed, but not acted on by this version; "
        "simple-shuffle serves",
    )


def test_duplicate_ids_and_control_characters(tmp_path: Path) -> None:
    entry = "  - model_name: m\n    litellm_params: {model: hosted_vllm/x, api_base: 'http://v/v1'}\n    model_info: {id: a}\n"
    with pytest.raises(ConfigError, match="already the id of model_list"):
        load(tmp_path, "model_list:\n" + entry + entry)
    bad_key = BASE + "      model: openai/x\n      api_key: os.environ/K\n"
    with pytest.raises(ConfigError, match="control characters"):
        load(tmp_path, bad_key, env={"K": "sk-a\rInjected: 1"})


@pytest.mark.parametrize(
    "api_base",
    ["http://exa mple.com/v1", "http://vllm:99999/v1", "http://vllm/v1\tx", "http://[::1/v1"],
)
def test_an_api_base_that_would_break_the_request_line_is_refused(
    tmp_path: Path, api_base: str
) -> None:
    """The URL is parsed by the standard library, which accepts more than an upstream request
    may carry: spaces and control characters, a host that is no host name."""
    text = BASE + f"      model: hosted_vllm/x\n      api_base: {json.dumps(api_base)}\n"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env={})
    assert caught.value.where == "model_list[0].litellm_params.api_base"


def test_an_api_base_is_sent_as_written(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        BASE + "      model: hosted_vllm/x\n      api_base: http://[::1]:8001/v1/\n",
        env={},
    )
    (deployment,) = config.deployments
    assert deployment.origin is not None
    assert (deployment.origin.host, deployment.origin.port) == ("::1", 8001)
    assert deployment.head(Endpoint.CHAT, None).startswith(  # type: ignore[union-attr]
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: [::1]:8001\r\n"
    )
