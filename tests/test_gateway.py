"""End to end over loopback: the openai SDK -> a real sidecar -> a fake upstream that records."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import MakeSidecar
from tests.fakes import REPORTED_SUFFIX, FakeUpstream


def vllm(upstream: FakeUpstream, name: str = "mistral", model: str = "mistralai/Mistral-7B") -> str:
    return f"""
model_list:
  - model_name: {name}
    litellm_params:
      model: hosted_vllm/{model}
      api_base: {upstream.base}
"""


async def test_chat_reaches_upstream_and_answers(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(f"""
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o-upstream
      api_base: {upstream.base}
      api_key: sk-upstream-secret
""")
    client = sidecar.openai("client-key")
    reply = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        temperature=0.2,
        extra_body={"top_k": 5, "custom": {"nested": [1, 2]}},
    )
    assert reply.choices[0].message.content == "Hello from upstream"
    assert (
        reply.model == "gpt-4o-upstream" + REPORTED_SUFFIX
    )  # the upstream's report, not the alias
    got = upstream.last
    assert (got.method, got.path) == ("POST", "/v1/chat/completions")
    assert got.headers["Authorization"] == "Bearer sk-upstream-secret"
    assert got.json() == {
        "model": "gpt-4o-upstream",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_k": 5,
        "custom": {"nested": [1, 2]},
    }


async def test_chat_stream_relays_every_chunk(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    stream = await sidecar.openai().chat.completions.create(
        model="mistral", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    pieces = [chunk.choices[0].delta.content async for chunk in stream]
    assert pieces == ["", "Hello", " from", " upstream", None]
    assert upstream.last.json()["stream"] is True
    assert "Authorization" not in upstream.last.headers  # hosted_vllm without a key sends none


async def test_text_completion_passes_every_parameter(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(f"""
model_list:
  - model_name: davinci
    litellm_params:
      model: text-completion-openai/gpt-3.5-turbo-instruct
      api_base: {upstream.base}
      api_key: sk-up
""")
    params = dict(
        best_of=2,
        echo=True,
        frequency_penalty=0.5,
        logit_bias={"50256": -100},
        logprobs=2,
        max_tokens=7,
        n=2,
        presence_penalty=-0.5,
        seed=42,
        stop=["\n", "END"],
        suffix="!",
        temperature=0.7,
        top_p=0.9,
        user="user-1",
    )
    reply = await sidecar.openai().completions.create(model="davinci", prompt="Once", **params)
    assert reply.choices[0].text == "Once upon a time"
    got = upstream.last
    assert got.path == "/v1/completions"
    assert got.json() == {"model": "gpt-3.5-turbo-instruct", "prompt": "Once", **params}

    stream = await sidecar.openai().completions.create(model="davinci", prompt="Once", stream=True)
    assert [c.choices[0].text async for c in stream] == ["Once", " upon", " a time"]
    assert upstream.last.json() == {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "Once",
        "stream": True,
        "stream_options": {"include_usage": True},  # asked so the stream is counted
    }


async def test_embeddings(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar(vllm(upstream, "embed", "BAAI/bge-small-en-v1.5"))
    reply = await sidecar.openai().embeddings.create(model="embed", input=["a", "b"])
    assert [d.embedding for d in reply.data] == [[0.5, -0.25, 0.125, 1.0]] * 2
    got = upstream.last
    assert got.path == "/v1/embeddings"
    assert got.json()["model"] == "BAAI/bge-small-en-v1.5"
    assert got.json()["input"] == ["a", "b"]


async def test_models_lists_the_table(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar(
        vllm(upstream)
        + """
  - model_name: demo
    litellm_params:
      model: openai/demo
      mock_response: hi
"""
    )
    page = await sidecar.openai().models.list()
    assert [(m.id, m.object) for m in page.data] == [("mistral", "model"), ("demo", "model")]
    assert upstream.received == []


async def test_unknown_model_is_404(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    with pytest.raises(openai.NotFoundError) as caught:
        await sidecar.openai().chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"
    assert upstream.received == []


async def test_defaults_from_the_table_yield_to_the_client(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream) + "      max_tokens: 64\n      temperature: 0.1\n")
    client = sidecar.openai()
    await client.chat.completions.create(
        model="mistral", messages=[{"role": "user", "content": "a"}]
    )
    assert upstream.last.json()["max_tokens"] == 64
    await client.chat.completions.create(
        model="mistral", messages=[{"role": "user", "content": "a"}], max_tokens=5
    )
    assert upstream.last.json()["max_tokens"] == 5
    assert upstream.last.json()["temperature"] == 0.1
    await client.embeddings.create(model="mistral", input="x")
    assert "max_tokens" not in upstream.last.json()  # a chat default never reaches /embeddings


async def test_upstream_connections_are_kept_alive(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    client = sidecar.openai()
    for _ in range(5):
        await client.chat.completions.create(
            model="mistral", messages=[{"role": "user", "content": "a"}]
        )
    # One pooled connection served all five calls: the upstream saw one client port.
    assert len({got.peer for got in upstream.received}) == 1


async def test_retrieve_one_model(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar(
        vllm(upstream) + "  - model_name: 'openai/*'\n    litellm_params:\n"
        f"      model: 'hosted_vllm/*'\n      api_base: {upstream.base}\n"
    )
    client = sidecar.openai()
    model = await client.models.retrieve("mistral")
    assert (model.id, model.owned_by) == ("mistral", "hosted_vllm")
    assert (await client.models.retrieve("openai/gpt-4o")).id == "openai/gpt-4o"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_extra_body_reaches_every_endpoint_as_given(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(
        vllm(upstream) + "      extra_body: {priority: 5, truncate_prompt_tokens: 100}\n"
    )
    client = sidecar.openai()
    await client.chat.completions.create(
        model="mistral", messages=[{"role": "user", "content": "a"}]
    )
    assert upstream.last.json()["priority"] == 5
    await client.embeddings.create(model="mistral", input="x", extra_body={"priority": 1})
    assert upstream.last.json()["truncate_prompt_tokens"] == 100
    assert upstream.last.json()["priority"] == 1  # the client's own value wins


async def test_reload_keeps_the_pooled_connections(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, tmp_path: object
) -> None:
    from pathlib import Path

    from sidecar import config as configs

    sidecar = await make_sidecar(vllm(upstream))
    client = sidecar.openai()
    await client.chat.completions.create(
        model="mistral", messages=[{"role": "user", "content": "a"}]
    )
    path = Path(str(tmp_path)) / "new.yaml"
    path.write_text(
        vllm(upstream)
        + "  - model_name: added\n    litellm_params: {model: openai/x, mock_response: hi}\n"
    )
    sidecar.running.gateway.reload(configs.load(path, environ={}))
    assert [m.id for m in (await client.models.list()).data] == ["mistral", "added"]
    await client.chat.completions.create(
        model="mistral", messages=[{"role": "user", "content": "b"}]
    )
    assert len({got.peer for got in upstream.received}) == 1  # the same upstream connection


async def test_integers_beyond_64_bits_are_refused_not_rounded(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """orjson reads them as floats: a 30-digit seed once reached the upstream as 1.23e+29."""
    import aiohttp

    sidecar = await make_sidecar(vllm(upstream))
    url = sidecar.url + "/v1/chat/completions"
    head = b'{"model": "mistral", "messages": [{"role": "user", "content": "call 12345678901234567890123"}]'
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=head + b', "seed": 123456789012345678901234567890}') as r:
            assert r.status == 400
            error = (await r.json())["error"]
        assert error["param"] == "seed" and error["code"] == "integer_out_of_range"
        assert upstream.received == []
        # The largest 64-bit values, and long digit runs inside strings, pass unchanged.
        for value in (b"18446744073709551615", b"-9223372036854775808"):
            async with http.post(url, data=head + b', "seed": ' + value + b"}") as r:
                assert r.status == 200
            assert b'"seed":' + value in upstream.last.body
            assert b"call 12345678901234567890123" in upstream.last.body


async def test_a_body_nested_past_what_can_be_written_is_a_400(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    import aiohttp

    sidecar = await make_sidecar(vllm(upstream))
    deep = b"[" * 300 + b"]" * 300
    body = b'{"model": "mistral", "messages": [], "x": ' + deep + b"}"
    url = sidecar.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(url, data=body) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "nesting_too_deep"
    assert upstream.received == []


async def test_a_wide_integer_is_caught_on_a_fallback_that_keeps_it(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """Chat over text drops response_format for the first attempt; the fallback keeps it."""
    import aiohttp
    from aiohttp import web

    async def down(request: web.Request, got: object) -> web.StreamResponse:
        return web.json_response({"error": {"message": "down"}}, status=503)

    upstream.scripts["/v1/completions"] = down
    sidecar = await make_sidecar(f"""
model_list:
  - model_name: text
    litellm_params: {{model: text-completion-openai/t, api_base: "{upstream.base}", api_key: ""}}
  - model_name: chat
    litellm_params: {{model: hosted_vllm/c, api_base: "{upstream.base}"}}
router_settings:
  num_retries: 0
  fallbacks: [{{text: [chat]}}]
""")
    body = (
        b'{"model": "text", "messages": [{"role": "user", "content": "hi"}], '
        b'"response_format": {"type": "json_schema", "maximum": 123456789012345678901234567890}}'
    )
    url = sidecar.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(url, data=body) as r:
        assert r.status == 400
        assert (await r.json())["error"]["param"] == "response_format.maximum"
    assert [got.path for got in upstream.received] == ["/v1/completions"]
