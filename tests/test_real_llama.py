"""The sidecar in front of a real llama.cpp server (llama-cpp-python[server]), compared call by
call with the same calls made straight to that server, with the official openai SDK.

Every call to this server through the sidecar once failed with an empty 400: its request-id
middleware refuses an X-Request-Id that is not a UUID, and the sidecar's own ids were not.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from sidecar.providers import translate
from tests.conftest import MakeSidecar, Sidecar
from tests.real import servers
from tests.real.servers import Server

UVICORN_KEEPALIVE = 5.0  # seconds uvicorn keeps an idle connection open (its default)
CHAT = [{"role": "user", "content": "Say hello to the sidecar."}]
SAME = {"temperature": 0, "seed": 42, "max_tokens": 16}  # greedy: the same text every time
# The text parameters of OpenAI's /v1/completions that this server accepts (all but the
# prompt and model): one call with all of them must answer the same both ways.
TEXT_PARAMETERS: dict[str, Any] = {
    "max_tokens": 8,
    "temperature": 0,
    "top_p": 0.9,
    "n": 1,
    "best_of": 1,
    "echo": True,
    "stop": ["\n\n"],
    "logprobs": 2,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
    "logit_bias": {"300": -5},
    "seed": 7,
    "user": "tester",
    "suffix": ".",
}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from servers.llama(tmp_path_factory.mktemp("llama"))


def table(server: Server) -> str:
    return f"""
model_list:
  - model_name: tiny                  # hosted_vllm/ with no key: no Authorization header
    litellm_params:
      model: hosted_vllm/tiny
      api_base: {server.base}
  - model_name: tiny-text             # chat over the server's /completions, translated
    litellm_params:
      model: text-completion-openai/tiny
      api_base: {server.base}
      api_key: ""
"""


@pytest.fixture
async def sidecar(llama: Server, make_sidecar: MakeSidecar) -> Sidecar:
    return await make_sidecar(table(llama))


@pytest.fixture
async def direct(llama: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=llama.base, api_key="unused", max_retries=0)
    yield client
    await client.close()


def served(llama: Server, path: str) -> list[str]:
    return llama.access_lines(path)


async def test_chat_answers_as_the_server_does(
    sidecar: Sidecar, direct: openai.AsyncOpenAI, llama: Server
) -> None:
    before = len(served(llama, "/v1/chat/completions"))
    through = await sidecar.openai().chat.completions.create(model="tiny", messages=CHAT, **SAME)
    lines = served(llama, "/v1/chat/completions")
    straight = await direct.chat.completions.create(model="tiny", messages=CHAT, **SAME)
    assert through.choices[0].message.content
    assert through.choices[0].message.content == straight.choices[0].message.content
    assert through.choices[0].finish_reason == straight.choices[0].finish_reason
    assert through.usage == straight.usage
    assert through.model == straight.model == "tiny"
    # The server itself answered the sidecar's call with a 200.
    assert len(lines) == before + 1 and lines[-1].endswith(" 200 OK")


async def test_streamed_chat_chunk_by_chunk(sidecar: Sidecar, direct: openai.AsyncOpenAI) -> None:
    async def deltas(client: openai.AsyncOpenAI) -> list[str | None]:
        stream = await client.chat.completions.create(
            model="tiny", messages=CHAT, stream=True, **SAME
        )
        chunks = [chunk async for chunk in stream]
        # The client asked for no usage: none reaches it, though the sidecar asked for one.
        assert all(chunk.choices and chunk.usage is None for chunk in chunks)
        return [chunk.choices[0].delta.content for chunk in chunks]

    through, straight = await deltas(sidecar.openai()), await deltas(direct)
    assert len(through) > 3 and "".join(filter(None, through))
    assert through == straight
    # llama-cpp-python's server takes stream_options but sends no usage even when asked: such
    # a stream cannot be counted (the README says so), and nothing is made up for it.
    async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/metrics") as r:
        assert 'kind="completion"' not in await r.text()


async def test_stream_headers_are_the_servers(sidecar: Sidecar, llama: Server) -> None:
    body = orjson.dumps({"model": "tiny", "messages": CHAT, "stream": True, **SAME})
    seen = []
    async with aiohttp.ClientSession() as http:
        for url in (sidecar.url + "/v1", llama.base):
            async with http.post(
                url + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
            ) as r:
                await r.read()
                seen.append(
                    [r.headers.getall(h, []) for h in ("Content-Type", "Cache-Control")]
                    + [r.headers.get("X-Accel-Buffering")]
                )
    assert seen[0] == seen[1]
    assert seen[0][1] == ["no-store"]  # the server's own, not replaced by the sidecar's


async def test_text_completion_with_every_text_parameter(
    sidecar: Sidecar, direct: openai.AsyncOpenAI, llama: Server
) -> None:
    through = await sidecar.openai().completions.create(
        model="tiny", prompt="Once upon a time", **TEXT_PARAMETERS
    )
    straight = await direct.completions.create(
        model="tiny", prompt="Once upon a time", **TEXT_PARAMETERS
    )
    assert through.choices[0].text.startswith("Once upon a time")  # echo reached the server
    assert through.choices[0].text == straight.choices[0].text
    got, expected = through.choices[0].logprobs, straight.choices[0].logprobs
    assert got is not None and expected is not None
    assert (got.tokens, got.text_offset) == (expected.tokens, expected.text_offset)
    # The server reuses the last prompt's state, which moves a float in its 7th digit.
    assert got.token_logprobs and expected.token_logprobs
    assert got.token_logprobs[0] is expected.token_logprobs[0] is None  # the first: no context
    assert got.token_logprobs[1:] == pytest.approx(expected.token_logprobs[1:], rel=1e-5)
    assert through.usage == straight.usage
    assert served(llama, "/v1/completions")[-2].endswith(" 200 OK")


async def test_streamed_text_completion(sidecar: Sidecar, direct: openai.AsyncOpenAI) -> None:
    async def texts(client: openai.AsyncOpenAI) -> list[str]:
        stream = await client.completions.create(
            model="tiny", prompt="Once upon a time", stream=True, **SAME
        )
        return [chunk.choices[0].text async for chunk in stream if chunk.choices]

    through, straight = await texts(sidecar.openai()), await texts(direct)
    assert len(through) > 3 and through == straight


async def test_chat_over_text_completion(
    sidecar: Sidecar, direct: openai.AsyncOpenAI, llama: Server
) -> None:
    """text-completion-openai/: the sidecar turns the messages into a prompt for the server's
    /completions and its reply back into chat; the same prompt sent straight gives the text."""
    prompt = translate.chat_to_text_request({"messages": CHAT})["prompt"]
    before = len(served(llama, "/v1/completions"))
    through = await sidecar.openai().chat.completions.create(
        model="tiny-text", messages=CHAT, **SAME
    )
    assert len(served(llama, "/v1/completions")) == before + 1  # not its /chat/completions
    straight = await direct.completions.create(model="tiny", prompt=prompt, **SAME)
    assert through.object == "chat.completion"
    assert through.choices[0].message.content == straight.choices[0].text
    assert through.usage == straight.usage

    stream = await sidecar.openai().chat.completions.create(
        model="tiny-text", messages=CHAT, stream=True, **SAME
    )
    chunks = [c async for c in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == straight.choices[0].text


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings_are_the_same_vectors(
    encoding: str, sidecar: Sidecar, direct: openai.AsyncOpenAI
) -> None:
    inputs = ["hello world", "the sidecar"]
    options: dict[str, Any] = {} if encoding == "base64" else {"encoding_format": "float"}
    # Without encoding_format the SDK asks for base64 and decodes it.
    through = await sidecar.openai().embeddings.create(model="tiny", input=inputs, **options)
    straight = await direct.embeddings.create(model="tiny", input=inputs, **options)
    assert [e.embedding for e in through.data] == [e.embedding for e in straight.data]
    assert len(through.data) == 2 and len(through.data[0].embedding) == 64
    assert through.data[0].embedding != through.data[1].embedding


async def test_request_ids_the_server_accepts(sidecar: Sidecar, llama: Server) -> None:
    """The root cause of the 400s: the id the sidecar makes is a UUID the server takes. A
    client's own id, UUID or not, is the client's answer, and the server gets one made here."""
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 2}
    given = str(uuid.uuid4())
    async with aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
            uuid.UUID(r.headers["x-request-id"])
        async with http.post(
            sidecar.url + "/v1/chat/completions", json=body, headers={"X-Request-Id": given}
        ) as r:
            assert r.status == 200 and r.headers["x-request-id"] == given
        async with http.post(
            sidecar.url + "/v1/chat/completions", json=body, headers={"X-Request-Id": "abc-1"}
        ) as r:
            assert r.status == 200 and r.headers["x-request-id"] == "abc-1"
        # The server's own check, straight: a non-UUID id is what it refuses, empty-bodied.
        async with http.post(
            llama.base + "/chat/completions", json=body, headers={"X-Request-Id": "abc-1"}
        ) as r:
            assert r.status == 400 and await r.read() == b""


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    sidecar: Sidecar, llama: Server
) -> None:
    """uvicorn closes a keep-alive connection after 5 idle seconds; the pooled connection must
    be dropped (or, in a race, the request resent), never answered with a 502."""
    client = sidecar.openai()
    before = len(served(llama, "/v1/chat/completions"))
    await client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    await asyncio.sleep(UVICORN_KEEPALIVE + 0.5)
    reply = await client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    assert reply.choices[0].message.content is not None
    assert len(served(llama, "/v1/chat/completions")) == before + 2


async def both(sidecar: Sidecar, llama: Server, path: str, body: bytes) -> list[Any]:
    """Status, content type and body of one raw call through the sidecar and straight."""
    answers = []
    async with aiohttp.ClientSession() as http:
        for url in (sidecar.url + "/v1" + path, llama.base + path):
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                answers.append((r.status, r.headers.get("Content-Type"), await r.read()))
    return answers


async def test_context_window_overflow_is_the_servers_error(
    sidecar: Sidecar, llama: Server
) -> None:
    prompt = "hello world " * servers.CONTEXT
    body = orjson.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 4})
    through, straight = await both(sidecar, llama, "/completions", body)
    assert through == straight
    status, _, raw = through
    assert status == 400
    assert orjson.loads(raw)["error"]["code"] == "context_length_exceeded"


async def test_a_wrongly_typed_parameter_is_the_servers_error(
    sidecar: Sidecar, llama: Server
) -> None:
    """The sidecar checks only what it relies on; a parameter's type is the server's to judge,
    and its answer (a 500 with pydantic's words, as this server gives it) comes back as is."""
    body = orjson.dumps({"model": "tiny", "prompt": "hi", "max_tokens": "many"})
    through, straight = await both(sidecar, llama, "/completions", body)
    assert through == straight
    status, _, raw = through
    assert status >= 400 and "max_tokens" in orjson.loads(raw)["error"]["message"]


async def test_complete_streams_are_200_in_the_log(
    sidecar: Sidecar, capfd: pytest.CaptureFixture[str]
) -> None:
    """The SDK may close its connection once it has read [DONE], before the server's end of
    body arrives: each such stream is still complete, a 200."""
    client = sidecar.openai()
    for _ in range(10):
        stream = await client.chat.completions.create(
            model="tiny", messages=CHAT, stream=True, **SAME
        )
        async for _chunk in stream:
            pass
        await stream.close()
    await asyncio.sleep(0.3)
    sidecar.running.gateway.access_log.flush()
    lines = [orjson.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["status"] for x in lines] == [200] * 10
    assert all(x["bytes"] for x in lines)


async def test_the_cache_keeps_and_replays_what_the_real_server_sent(
    llama: Server, make_sidecar: MakeSidecar
) -> None:
    # The server's own framing decides what may be kept: a whole reply with its length, a
    # stream chunked and ending with [DONE]. Both must be hits the second time.
    cached = await make_sidecar(table(llama) + "litellm_settings:\n  cache: true\n")
    client = cached.openai()
    before = len(served(llama, "/v1/chat/completions"))
    whole = [
        await client.chat.completions.with_raw_response.create(model="tiny", messages=CHAT, **SAME)
        for _ in range(2)
    ]
    assert [r.headers["x-sidecar-cache"] for r in whole] == ["miss", "hit"]
    assert whole[1].content == whole[0].content and whole[0].parse().choices[0].message.content

    async def streamed() -> tuple[str, list[str | None]]:
        async with client.chat.completions.with_streaming_response.create(
            model="tiny", messages=CHAT, stream=True, **SAME
        ) as r:
            deltas = [c.choices[0].delta.content async for c in await r.parse() if c.choices]
            return r.headers["x-sidecar-cache"], deltas

    first, second = await streamed(), await streamed()
    assert (first[0], second[0]) == ("miss", "hit")
    assert second[1] == first[1] and len(first[1]) > 3
    assert len(served(llama, "/v1/chat/completions")) == before + 2  # one call each, no more
