"""Each provider end to end: the openai SDK -> sidecar -> a fake upstream that checks what came."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from tests.conftest import MakeSidecar
from tests.fakes import REPORTED_SUFFIX, FakeUpstream

HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def text_completion(upstream: FakeUpstream) -> str:
    return f"""
model_list:
  - model_name: instruct
    litellm_params:
      model: text-completion-openai/gpt-3.5-turbo-instruct
      api_base: {upstream.base}
      api_key: sk-up
      max_tokens: 32
"""


async def test_chat_over_text_completion(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    client = (await make_sidecar(text_completion(upstream))).openai()
    reply = await client.chat.completions.create(
        model="instruct",
        messages=HI,
        n=2,
        max_completion_tokens=8,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    assert reply.object == "chat.completion"
    assert [c.message.content for c in reply.choices] == ["Once upon a time"] * 2
    assert [c.message.role for c in reply.choices] == ["assistant"] * 2
    assert reply.choices[1].finish_reason == "length"
    assert reply.usage is not None and reply.usage.total_tokens == 6
    assert reply.model == "gpt-3.5-turbo-instruct" + REPORTED_SUFFIX
    got = upstream.last
    assert got.path == "/v1/completions"
    assert got.headers["Authorization"] == "Bearer sk-up"
    assert got.json() == {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "system: Be brief.\n\nuser: Hi\n\nassistant:",
        "n": 2,
        "max_tokens": 8,  # the client's max_completion_tokens, over the table's default
    }


async def test_chat_over_text_completion_streamed(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    client = (await make_sidecar(text_completion(upstream))).openai()
    stream = await client.chat.completions.create(
        model="instruct", messages=HI, n=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    texts: dict[int, str] = {0: "", 1: ""}
    roles: dict[int, str | None] = {}
    for c in chunks:
        for choice in c.choices:
            roles.setdefault(choice.index, choice.delta.role)
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "Once upon a time", 1: "Once upon a time"}
    assert roles == {0: "assistant", 1: "assistant"}  # the first chunk of each choice
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert upstream.last.json()["stream"] is True
    assert upstream.last.json()["max_tokens"] == 32  # the table's default


async def test_upstream_error_is_not_translated(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    from aiohttp import web

    async def refuse(request: web.Request, got: object) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": "no",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "bad",
                }
            },
            status=400,
        )

    upstream.scripts["/v1/completions"] = refuse
    client = (await make_sidecar(text_completion(upstream))).openai()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="instruct", messages=HI)
    assert caught.value.code == "bad"


def azure(upstream: FakeUpstream, provider: str = "azure", model: str = "my-gpt4o") -> str:
    return f"""
model_list:
  - model_name: az
    litellm_params:
      model: {provider}/{model}
      api_base: http://127.0.0.1:{upstream.port}
      api_key: os.environ/AZURE_API_KEY
      api_version: "2024-10-21"
      extra_headers: {{X-Team: search}}
"""


async def test_azure_all_three_endpoints(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    client = (await make_sidecar(azure(upstream), env={"AZURE_API_KEY": "az-key"})).openai()
    await client.chat.completions.create(model="az", messages=HI)
    await client.completions.create(model="az", prompt="Once")
    await client.embeddings.create(model="az", input="x")
    assert [(g.path, g.query) for g in upstream.received] == [
        (f"/openai/deployments/my-gpt4o/{e}", {"api-version": "2024-10-21"})
        for e in ("chat/completions", "completions", "embeddings")
    ]
    for got in upstream.received:
        assert got.headers["api-key"] == "az-key"
        assert got.headers["X-Team"] == "search"
        assert "Authorization" not in got.headers
        assert got.json()["model"] == "my-gpt4o"


async def test_azure_text_serves_chat_through_completions(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(
        azure(upstream, "azure_text", "davinci"),
        env={"AZURE_API_KEY": "k", "AZURE_API_VERSION": "x"},
    )
    reply = await sidecar.openai().chat.completions.create(model="az", messages=HI)
    assert reply.choices[0].message.content == "Once upon a time"
    assert upstream.last.path == "/openai/deployments/davinci/completions"
    # No deployment of the group serves embeddings: 404, as for a path the model lacks.
    with pytest.raises(openai.NotFoundError) as refused:
        await sidecar.openai().embeddings.create(model="az", input="x")
    assert refused.value.code == "unsupported_endpoint"


async def test_azure_wildcard_names_cannot_leave_the_path(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    table = azure(upstream, model="*").replace("model_name: az", "model_name: 'azure/*'")
    sidecar = await make_sidecar(table, env={"AZURE_API_KEY": "k"})
    async with http.post(
        sidecar.url + "/v1/chat/completions", json={"model": "azure/gpt-4o.mini_2", "messages": HI}
    ) as r:
        assert r.status == 200
    assert upstream.last.path == "/openai/deployments/gpt-4o.mini_2/chat/completions"
    assert upstream.last.query == {"api-version": "2024-10-21"}
    for name in ("../../admin?x=1#", "a/b", "..", "x%2Fy", "a b\r\nX-Evil: 1", "é", "a" * 65):
        body = {"model": "azure/" + name, "messages": HI}
        async with http.post(sidecar.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 400, name
            assert (await r.json())["error"]["code"] == "invalid_model_name"
    assert len(upstream.received) == 1


async def test_wildcards_route_and_exact_names_win(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    client = (
        await make_sidecar(f"""
model_list:
  - model_name: "openai/*"
    litellm_params: {{model: "hosted_vllm/*", api_base: "{upstream.base}"}}
  - model_name: "*"
    litellm_params: {{model: "hosted_vllm/catch-all", api_base: "{upstream.base}"}}
  - model_name: "openai/gpt-4o"
    litellm_params: {{model: "hosted_vllm/exact", api_base: "{upstream.base}"}}
""")
    ).openai()
    sent = []
    for model in ("openai/gpt-4o-mini", "openai/gpt-4o", "llama-3", "openai/x/y"):
        await client.chat.completions.create(model=model, messages=HI)
        sent.append(upstream.last.json()["model"])
    assert sent == ["gpt-4o-mini", "exact", "catch-all", "x/y"]


async def test_system_messages_folded_for_models_that_reject_them(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    client = (
        await make_sidecar(f"""
model_list:
  - model_name: gemma
    litellm_params:
      model: hosted_vllm/google/gemma-2-9b-it
      api_base: {upstream.base}
      supports_system_message: false
""")
    ).openai()
    await client.chat.completions.create(
        model="gemma",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Speak French."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Salut"},
            {"role": "user", "content": "Bye"},
            {"role": "system", "content": "Sign off."},
        ],
    )
    assert upstream.last.json()["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Be brief.\n\nSpeak French."},
                {"type": "text", "text": "Hi"},
            ],
        },
        {"role": "assistant", "content": "Salut"},
        {"role": "user", "content": "Bye\n\nSign off."},
    ]
