"""The sidecar in front of another gateway, the LiteLLM proxy (its version pinned in
tests/real/cached_venv.sh), with mock_response models behind a master key: a second HTTP stack
(uvicorn, FastAPI, LiteLLM's own auth) that checks the sidecar's framing, headers and keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import MakeSidecar, Sidecar
from tests.real import servers
from tests.real.servers import LITELLM_KEY, Server

CHAT = [{"role": "user", "content": "hi"}]
MOCK = "Hello from the LiteLLM proxy"


@pytest.fixture(scope="module")
def litellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from servers.litellm(tmp_path_factory.mktemp("litellm"))


@pytest.fixture
async def sidecar(litellm: Server, make_sidecar: MakeSidecar) -> Sidecar:
    return await make_sidecar(f"""
model_list:
  - model_name: gateway
    litellm_params:
      model: openai/mock
      api_base: {litellm.base}
      api_key: {LITELLM_KEY}
  - model_name: wrong-key
    litellm_params:
      model: openai/mock
      api_base: {litellm.base}
      api_key: sk-not-the-master-key
  - model_name: unknown-there
    litellm_params:
      model: openai/not-in-its-table
      api_base: {litellm.base}
      api_key: {LITELLM_KEY}
""")


@pytest.fixture
async def direct(litellm: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=litellm.base, api_key=LITELLM_KEY, max_retries=0)
    yield client
    await client.close()


async def test_chat(sidecar: Sidecar, direct: openai.AsyncOpenAI, litellm: Server) -> None:
    # The client's own key is the sidecar's business; LiteLLM gets the table's.
    through = await sidecar.openai("a-client-key").chat.completions.create(
        model="gateway", messages=CHAT
    )
    assert litellm.access_lines("/v1/chat/completions")[-1].endswith(" 200 OK")
    straight = await direct.chat.completions.create(model="mock", messages=CHAT)
    assert through.choices[0].message.content == straight.choices[0].message.content == MOCK
    assert through.model == straight.model
    assert through.usage == straight.usage


async def test_streamed_chat(sidecar: Sidecar, direct: openai.AsyncOpenAI) -> None:
    async def deltas(client: openai.AsyncOpenAI, model: str) -> list[str | None]:
        stream = await client.chat.completions.create(model=model, messages=CHAT, stream=True)
        return [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]

    through = await deltas(sidecar.openai(), "gateway")
    assert len(through) > 2 and "".join(filter(None, through)) == MOCK
    assert through == await deltas(direct, "mock")
    # The sidecar asked LiteLLM for the usage (its chunk has one empty choice) and took it out.
    async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/metrics") as r:
        assert 'sidecar_tokens_total{model="gateway",kind="completion"} ' in await r.text()


async def test_text_completion(sidecar: Sidecar, direct: openai.AsyncOpenAI) -> None:
    through = await sidecar.openai().completions.create(model="gateway", prompt="hi")
    straight = await direct.completions.create(model="mock", prompt="hi")
    assert through.choices[0].text == straight.choices[0].text == MOCK


async def raw(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], key: str
) -> tuple[int, Any, list[str]]:
    async with http.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, orjson.loads(await r.read()), r.headers.getall("Content-Type")


@pytest.mark.parametrize(
    ("group", "upstream_model", "key"),
    [("wrong-key", "mock", "sk-not-the-master-key"), ("unknown-there", "not-in-its-table", None)],
)
async def test_its_errors_come_back_unchanged(
    group: str,
    upstream_model: str,
    key: str | None,
    sidecar: Sidecar,
    litellm: Server,
    http: aiohttp.ClientSession,
) -> None:
    through = await raw(
        http, sidecar.url + "/v1/chat/completions", {"model": group, "messages": CHAT}, "client"
    )
    straight = await raw(
        http,
        litellm.base + "/chat/completions",
        {"model": upstream_model, "messages": CHAT},
        key or LITELLM_KEY,
    )
    assert through == straight
    assert through[0] >= 400 and "error" in through[1]
    assert "sk-not-the-master-key" not in orjson.dumps(through[1]).decode()


async def test_its_response_headers_come_back(
    sidecar: Sidecar, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gateway", "messages": CHAT}
    async with http.post(sidecar.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        assert r.headers["x-litellm-version"]  # the upstream's end-to-end headers
        assert r.headers["x-sidecar-deployment"] == "openai/mock#0"
        assert len(r.headers.getall("Content-Length")) == 1


async def test_responses_through_it(sidecar: Sidecar, direct: openai.AsyncOpenAI) -> None:
    """Its Responses API (over its mock model) through the sidecar, as straight to it; a
    continuation names the previous response, which the sidecar passes on unchanged."""
    through = await sidecar.openai("a-client-key").responses.create(model="gateway", input="hi")
    straight = await direct.responses.create(model="mock", input="hi")
    assert through.output_text == straight.output_text == MOCK
    assert through.id.startswith("resp_")
    follow = await sidecar.openai("a-client-key").responses.create(
        model="gateway", input="and then?", previous_response_id=through.id
    )
    assert follow.output_text == MOCK


async def test_messages_and_count_tokens_through_it(sidecar: Sidecar, litellm: Server) -> None:
    """Its Anthropic Messages API, with Anthropic's own SDK on the client side: the sidecar's
    key checks x-api-key, and LiteLLM gets the table's key instead."""
    import anthropic

    async with anthropic.AsyncAnthropic(
        base_url=str(sidecar.url), api_key="a-client-key", max_retries=0
    ) as claude:
        message = await claude.messages.create(
            model="gateway", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text" and message.content[0].text == MOCK
        counted = await claude.messages.count_tokens(
            model="gateway", messages=[{"role": "user", "content": "hi"}]
        )
        assert counted.input_tokens > 0
        with pytest.raises(anthropic.APIStatusError) as refused:
            # LiteLLM refuses a key that is not its master key (without a database, with a
            # 400): its own error, passed on as it came, not reshaped by the sidecar.
            await claude.messages.create(
                model="wrong-key", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.status_code in (400, 401)
        body: Any = refused.value.body
        assert "error" in body and body.get("type") != "error"  # LiteLLM's shape, not ours
