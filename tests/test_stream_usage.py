"""Streams are counted though their client did not ask for usage: the upstream is asked for
stream_options.include_usage, and the chunk that adds is not in what the client receives."""

from __future__ import annotations

import itertools
import json

import aiohttp
import pytest
from aiohttp import web

from sidecar import stream_usage
from tests.conftest import MakeSidecar, Sidecar
from tests.fakes import FakeUpstream, RawUpstream, Received, chat, chat_chunks, sse, usage_chunk

KEY = "sk-stream-usage-key"
IN, OUT = 0.000002, 0.000010
CHAT = [{"role": "user", "content": "hi"}]


def table(base: str, provider: str = "hosted_vllm", extra: str = "") -> str:
    return f"""
model_list:
  - model_name: m
    litellm_params:
      model: {provider}/served
      api_base: {base}
      input_cost_per_token: {IN}
      output_cost_per_token: {OUT}
      {extra}
general_settings:
  master_key: {KEY}
"""


async def metrics(sidecar: Sidecar) -> str:
    async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/metrics") as r:
        return await r.text()


def streamed(upstream: FakeUpstream) -> list[Received]:
    return [r for r in upstream.received if r.json().get("stream")]


def asked_for_usage(upstream: FakeUpstream) -> Received:
    """The one stream the upstream received, which asked for its usage and nothing more."""
    (received,) = streamed(upstream)
    assert received.json()["stream_options"] == {"include_usage": True}
    return received


async def test_a_stream_without_usage_is_counted_and_unchanged(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, capfd: pytest.CaptureFixture[str]
) -> None:
    sidecar = await make_sidecar(table(upstream.base))
    client = sidecar.openai(KEY)
    stream = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
    chunks = [c async for c in stream]
    # What a client that never asked for usage reads: every chunk has its choice.
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from upstream"
    assert all(c.usage is None for c in chunks)
    asked_for_usage(upstream)
    text = await metrics(sidecar)
    assert 'sidecar_tokens_total{model="m",kind="prompt"} 5' in text
    assert 'sidecar_tokens_total{model="m",kind="completion"} 3' in text
    sidecar.running.gateway.access_log.flush()
    logged = [json.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    (line,) = [x for x in logged if x["path"] == "/v1/chat/completions"]
    assert line["cost"] == pytest.approx(5 * IN + 3 * OUT)


async def test_a_stream_that_asked_for_usage_is_as_it_came(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream.base))
    stream = await sidecar.openai(KEY).chat.completions.create(
        model="m",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8
    asked_for_usage(upstream)
    assert 'sidecar_tokens_total{model="m",kind="prompt"} 5' in await metrics(sidecar)


async def test_include_usage_false_is_asked_and_stripped(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream.base))
    stream = await sidecar.openai(KEY).completions.create(
        model="m", prompt="Once", stream=True, stream_options={"include_usage": False}
    )
    chunks = [c async for c in stream]
    assert [c.choices[0].text for c in chunks] == ["Once", " upon", " a time"]
    asked_for_usage(upstream)
    assert 'sidecar_tokens_total{model="m",kind="completion"} 4' in await metrics(sidecar)


async def test_chat_over_a_text_upstream_is_stripped_after_translation(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream.base, "text-completion-openai", "api_key: k"))
    stream = await sidecar.openai(KEY).chat.completions.create(
        model="m", messages=CHAT, stream=True
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Once upon a time"
    assert asked_for_usage(upstream).path == "/v1/completions"
    assert 'sidecar_tokens_total{model="m",kind="completion"} 4' in await metrics(sidecar)


# The usage chunk cut at every awkward place a read can end: inside its marker, inside its
# blank line, and with [DONE] in the same read.
_EVENTS = [
    *chat_chunks("served", ["a", "b"])[:-1],
    usage_chunk("served", 7, 2),
    b"data: [DONE]\n\n",
]
_WHOLE = b"".join(_EVENTS)
_AT = _WHOLE.index(b'"choices":[]')


@pytest.mark.parametrize(
    "cuts",
    [
        [_AT + 5],  # in "choices"
        [_AT + 11],  # between [ and ]
        [_WHOLE.index(b"\n\ndata: [DONE]") + 1],  # between the two newlines ending it
        [_AT - 40, _AT + 3, _AT + 12, len(_WHOLE) - 3],
        [],  # all in one read
    ],
)
async def test_a_usage_chunk_split_across_reads_is_still_taken_out(
    make_sidecar: MakeSidecar, cuts: list[int]
) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    bounds = [0, *cuts, len(_WHOLE)]
    pieces = [_WHOLE[a:b] for a, b in itertools.pairwise(bounds)]
    framed = [b"%x\r\n%b\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    upstream = await RawUpstream(pieces=[head, *framed], pause=0.02, close=False).start()
    try:
        sidecar = await make_sidecar(table(upstream.base))
        body = {"model": "m", "messages": CHAT, "stream": True}
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http,
            http.post(sidecar.url + "/v1/chat/completions", json=body) as r,
        ):
            got = await r.read()
        without = b"".join(e for e in _EVENTS if b'"usage"' not in e)
        assert got == without
        text = await metrics(sidecar)
        assert 'sidecar_tokens_total{model="m",kind="prompt"} 7' in text
        assert 'sidecar_tokens_total{model="m",kind="completion"} 2' in text
    finally:
        await upstream.stop()


def _chunk(choices: list[dict[str, object]], usage: dict[str, int] | None) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "served", "choices": choices}
    return b"data: " + json.dumps({**chunk, "usage": usage}).encode() + b"\n\n"


_USAGE = {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}


@pytest.mark.parametrize(
    ("last", "kept"),
    [
        # LiteLLM's: one choice with an empty delta.
        (_chunk([{"index": 0, "delta": {}}], _USAGE), False),
        # OpenAI's, with "usage": null on the chunks before it.
        (_chunk([], _USAGE), False),
        # Usage on a chunk with output: the chunk is the client's.
        (_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], _USAGE), True),
        (_chunk([{"index": 0, "delta": {"content": "!"}}], _USAGE), True),
    ],
)
async def test_every_shape_of_usage_chunk(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, last: bytes, kept: bool
) -> None:
    events = [_chunk([{"index": 0, "delta": {"content": "hi"}}], None), last, b"data: [DONE]\n\n"]

    async def script(request: web.Request, got: Received) -> web.StreamResponse:
        return await sse(request, events)

    upstream.scripts["/v1/chat/completions"] = script
    sidecar = await make_sidecar(table(upstream.base))
    body = {"model": "m", "messages": CHAT, "stream": True}
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http,
        http.post(sidecar.url + "/v1/chat/completions", json=body) as r,
    ):
        got = await r.read()
    assert got == b"".join(events if kept else [events[0], events[2]])
    assert 'sidecar_tokens_total{model="m",kind="completion"} 7' in await metrics(sidecar)


async def test_a_content_that_looks_like_usage_is_kept(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """A chunk whose text holds the marker is the model's output, escaped in its JSON."""
    words = ['"choices":[]', ' "usage":{"prompt_tokens":1}']

    async def tricky(request: web.Request, got: Received) -> web.StreamResponse:
        return await sse(request, chat_chunks("served", words))

    upstream.scripts["/v1/chat/completions"] = tricky
    sidecar = await make_sidecar(table(upstream.base))
    stream = await sidecar.openai(KEY).chat.completions.create(
        model="m", messages=CHAT, stream=True
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(words)


async def test_an_upstream_that_ignores_include_usage_still_streams(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """No usage chunk came: nothing is taken out and the tokens are not counted."""

    async def no_usage(request: web.Request, got: Received) -> web.StreamResponse:
        return await sse(request, chat_chunks("served", ["x", "y"]), pause=0.01)

    upstream.scripts["/v1/chat/completions"] = no_usage
    sidecar = await make_sidecar(table(upstream.base))
    stream = await sidecar.openai(KEY).chat.completions.create(
        model="m", messages=CHAT, stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "xy"
    assert 'kind="completion"' not in await metrics(sidecar)


@pytest.mark.parametrize(
    ("version", "asked"),
    [("2024-06-01", False), ("2024-07-01-preview", False), ("2024-10-21", True), ("preview", True)],
)
async def test_old_azure_versions_are_not_asked(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, version: str, asked: bool
) -> None:
    """Azure refuses stream_options before 2024-08-01-preview: a 400 for every stream."""
    upstream.scripts["/openai/deployments/served/chat/completions"] = chat
    base = f"http://127.0.0.1:{upstream.port}"
    extra = f"api_version: '{version}'\n      api_key: azure-key"
    sidecar = await make_sidecar(table(base, "azure", extra))
    stream = await sidecar.openai(KEY).chat.completions.create(
        model="m", messages=CHAT, stream=True
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from upstream"
    (received,) = streamed(upstream)
    assert received.query == {"api-version": version}
    assert ("stream_options" in received.json()) is asked


def test_asking_keeps_the_clients_options() -> None:
    body = {"stream": True, "stream_options": {"include_obfuscation": False}}
    assert stream_usage.asking(body)["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }
    assert body["stream_options"] == {"include_obfuscation": False}
    assert not stream_usage.to_ask(stream_usage.Endpoint.CHAT, {"stream": False})
    assert not stream_usage.to_ask(
        stream_usage.Endpoint.CHAT, {"stream": True, "stream_options": "bad"}
    )
    # vLLM's continuous_usage_stats does nothing without include_usage: the client's stream
    # has no usage, and the upstream is asked for the last chunk's only.
    continuous = {"stream": True, "stream_options": {"continuous_usage_stats": True}}
    assert stream_usage.to_ask(stream_usage.Endpoint.CHAT, continuous)
    assert stream_usage.asking(continuous)["stream_options"] == {"include_usage": True}
    assert not stream_usage.to_ask(stream_usage.Endpoint.RESPONSES, {"stream": True})


def test_a_held_event_is_let_go_at_the_end() -> None:
    out: list[tuple[bytes, bool]] = []

    def sink(data: bytes, end: bool) -> bool:
        out.append((data, end))
        return True

    strip = stream_usage.Strip(sink)
    strip(b'data: {}\n\ndata: {"half', False)
    strip(b'":1}', False)
    strip(b"", True)
    assert out == [(b"data: {}\n\n", False), (b"", False), (b'data: {"half":1}', True)]
    assert b"".join(d for d, _ in out) == b'data: {}\n\ndata: {"half":1}'


def _sample(text: str, name: str, **labels: str) -> float:
    want = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "} "
    found = [line for line in text.splitlines() if line.startswith(want)]
    assert found, f"no {want}in /metrics"
    return float(found[0].split()[-1])


async def test_the_genai_histograms(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    """OpenTelemetry's GenAI metrics beside ours: tokens by type, time to first token of
    streams, request duration, by operation and model."""
    sidecar = await make_sidecar(table(upstream.base))
    client = sidecar.openai(KEY)
    await client.chat.completions.create(model="m", messages=CHAT)
    stream = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
    assert [c async for c in stream]
    await client.embeddings.create(model="m", input="x")
    text = await metrics(sidecar)
    chat = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "m"}
    assert _sample(text, "gen_ai_client_token_usage_sum", **chat, gen_ai_token_type="input") == 10
    assert _sample(text, "gen_ai_client_token_usage_sum", **chat, gen_ai_token_type="output") == 6
    assert _sample(text, "gen_ai_client_token_usage_count", **chat, gen_ai_token_type="input") == 2
    assert _sample(text, "gen_ai_server_time_to_first_token_count", **chat) == 1  # the stream's
    assert _sample(text, "gen_ai_server_request_duration_count", **chat) == 2
    embeddings = {"gen_ai_operation_name": "embeddings", "gen_ai_request_model": "m"}
    assert _sample(text, "gen_ai_server_request_duration_count", **embeddings) == 1
    assert "# TYPE gen_ai_client_token_usage histogram" in text


def test_mixed_line_endings() -> None:
    out: list[bytes] = []

    def sink(data: bytes, end: bool) -> bool:
        out.append(data)
        return True

    strip = stream_usage.Strip(sink)
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":1}}'
    # Lines ended by LF, blank lines by CRLF: each read is whole events, passed at once.
    strip(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\r\n', False)
    assert out == [b'data: {"choices":[{"delta":{"content":"a"}}]}\n\r\n']
    strip(usage + b"\r\n\n" + b"data: [DONE]\n\r\n", True)
    assert out[-1] == b"data: [DONE]\n\r\n"


async def test_a_compressing_upstream_is_asked_for_plain_bytes(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """The OpenAI SDK accepts gzip; the usage chunk can only be taken out of plain bytes."""

    async def compressing(request: web.Request, got: Received) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            reply.enable_compression(web.ContentCoding.gzip)
        await reply.prepare(request)
        for event in [
            *chat_chunks("served", ["x"])[:-1],
            usage_chunk("served", 1, 1),
            b"data: [DONE]\n\n",
        ]:
            await reply.write(event)
        await reply.write_eof()
        return reply

    upstream.scripts["/v1/chat/completions"] = compressing
    sidecar = await make_sidecar(table(upstream.base))
    stream = await sidecar.openai(KEY).chat.completions.create(
        model="m", messages=CHAT, stream=True
    )
    assert all(c.choices for c in [c async for c in stream])
    assert upstream.last.headers["Accept-Encoding"] == "identity"
    assert 'sidecar_tokens_total{model="m",kind="completion"} 1' in await metrics(sidecar)


async def test_an_operators_stream_options_are_kept(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """stream_options in litellm_params: the operator's choice, sent and relayed as it is."""
    extra = "stream_options: {include_usage: true}"
    sidecar = await make_sidecar(table(upstream.base, extra=extra))
    stream = await sidecar.openai(KEY).chat.completions.create(
        model="m", messages=CHAT, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert upstream.last.json()["stream_options"] == {"include_usage": True}
