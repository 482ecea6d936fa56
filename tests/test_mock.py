"""mock_response answers in the OpenAI API's exact shape, as the official SDK parses it."""

from __future__ import annotations

import aiohttp
import orjson

from sidecar import mock
from sidecar.routes import Endpoint
from tests.conftest import MakeSidecar

TABLE = """
model_list:
  - model_name: demo
    litellm_params:
      model: openai/demo-model
      mock_response: "Hello there, friend."
"""


async def test_mock_chat(make_sidecar: MakeSidecar) -> None:
    client = (await make_sidecar(TABLE)).openai()
    reply = await client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], n=2
    )
    assert reply.object == "chat.completion"
    assert reply.model == "demo-model"
    assert [c.message.content for c in reply.choices] == ["Hello there, friend."] * 2
    assert [c.finish_reason for c in reply.choices] == ["stop", "stop"]
    assert reply.usage is not None and reply.usage.total_tokens == (
        reply.usage.prompt_tokens + reply.usage.completion_tokens
    )


async def test_mock_chat_stream(make_sidecar: MakeSidecar) -> None:
    client = (await make_sidecar(TABLE)).openai()
    stream = await client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, friend."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1


async def test_mock_text_completion(make_sidecar: MakeSidecar) -> None:
    client = (await make_sidecar(TABLE)).openai()
    reply = await client.completions.create(model="demo", prompt="Say hi")
    assert reply.object == "text_completion"
    assert reply.choices[0].text == "Hello there, friend."
    stream = await client.completions.create(model="demo", prompt="Say hi", stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == "Hello there, friend."


async def test_mock_stream_is_sse_ending_with_done(
    make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(TABLE)
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with http.post(sidecar.url + "/chat/completions", json=body) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Cache-Control"] == "no-cache"
        raw = await r.read()
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(e.startswith(b"data: ") for e in events[:-1])


def test_stream_events_are_json_chunks() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "n": 1}
    events = list(mock.stream(body, Endpoint.CHAT, "m", "a b"))
    chunks = [orjson.loads(e[len(b"data: ") :]) for e in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "a "},
        {"content": "b"},
        {},
    ]
    assert events[-1] == mock.DONE
