"""Streams go through chunk by chunk, as they arrive, and both ends learn when the other leaves."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream, Received, chat_chunks, dies_after, held_after_first, sse
from tests.test_gateway import vllm

STREAM = {"model": "mistral", "messages": [{"role": "user", "content": "hi"}], "stream": True}
LIMIT = 10  # seconds any wait in these tests may take before it counts as a failure


async def test_stream_bytes_and_headers_are_the_upstream_s(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sent = b"".join(chat_chunks("m", ["Hello", " from", " upstream"]))
    # Written in pieces that cut events and even UTF-8 characters apart: the pipe must not care.
    pieces = [sent[:7], sent[7:300], "é".encode()[:1], "é".encode()[1:], sent[300:]]

    async def odd_splits(request: web.Request, got: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Up": "1"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    upstream.scripts["/v1/chat/completions"] = odd_splits
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", json=STREAM) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["X-Accel-Buffering"] == "no"
        assert r.headers["X-Up"] == "1"
        assert r.headers["x-sidecar-deployment"] == "hosted_vllm/mistralai/Mistral-7B#0"
        assert await r.read() == b"".join(pieces)


async def test_a_streams_own_cache_control_is_kept(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    """Ours are added only where the upstream said nothing (llama.cpp's server says no-store)."""

    async def no_store(request: web.Request, got: Received) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    upstream.scripts["/v1/chat/completions"] = no_store
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", json=STREAM) as r:
        assert r.headers.getall("Cache-Control") == ["no-store"]
        assert r.headers["X-Accel-Buffering"] == "no"
        assert await r.read() == b"data: [DONE]\n\n"


async def test_first_chunk_arrives_before_the_upstream_finishes(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    client_saw_first = asyncio.Event()
    events = chat_chunks("m", ["one", "two"])

    # The rest is sent only once the client has the first chunk: a buffering proxy would
    # deadlock here and the wait below would time out.
    upstream.scripts["/v1/chat/completions"] = held_after_first(events, client_saw_first, LIMIT)
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", json=STREAM) as r:
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), LIMIT)
        assert first == events[0]
        client_saw_first.set()
        rest = await asyncio.wait_for(r.read(), LIMIT)
    assert first + rest == b"".join(events)


async def test_client_disconnect_closes_the_upstream(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    upstream_saw_close = asyncio.Event()
    sent = 0

    async def endless(request: web.Request, got: Received) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for _ in range(int(LIMIT / 0.01)):
                await response.write(b'data: {"tick": 1}\n\n')
                sent += 1
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):
            upstream_saw_close.set()
            raise
        return response

    upstream.scripts["/v1/chat/completions"] = endless
    sidecar = await make_sidecar(vllm(upstream))
    r = await http.post(sidecar.url + "/v1/chat/completions", json=STREAM)
    assert await asyncio.wait_for(r.content.readuntil(b"\n\n"), LIMIT) == b'data: {"tick": 1}\n\n'
    r.close()  # the client goes away mid-stream
    await asyncio.wait_for(upstream_saw_close.wait(), LIMIT)
    assert sent < LIMIT / 0.01


async def test_client_disconnect_while_waiting_closes_the_upstream(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    upstream_saw_close = asyncio.Event()

    async def thinking(request: web.Request, got: Received) -> web.Response:
        try:
            await asyncio.sleep(LIMIT)
        except asyncio.CancelledError:
            upstream_saw_close.set()
            raise
        return web.Response(text="too late")

    upstream.scripts["/v1/chat/completions"] = thinking
    sidecar = await make_sidecar(vllm(upstream))
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(sidecar.url + "/v1/chat/completions", json=STREAM)
        )
        while not upstream.received:
            await asyncio.sleep(0.01)
        request.cancel()  # the client gives up before any reply
        with pytest.raises(asyncio.CancelledError):
            await request
    await asyncio.wait_for(upstream_saw_close.wait(), LIMIT)


async def test_upstream_dying_mid_stream_is_not_a_clean_end(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    events = chat_chunks("m", ["one", "two"])

    upstream.scripts["/v1/chat/completions"] = dies_after(events[0])
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", json=STREAM) as r:
        assert r.status == 200
        assert await r.content.readuntil(b"\n\n") == events[0]
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(r.read(), LIMIT)
    async with http.post(sidecar.url + "/v1/chat/completions", json=STREAM) as r:
        assert r.status == 200  # and the gateway keeps serving


async def test_slow_stream_keeps_flowing(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    """A stream longer than the idle timeout lives on as long as chunks keep coming."""

    async def slow(request: web.Request, got: Received) -> web.StreamResponse:
        return await sse(request, chat_chunks("m", ["a", "b", "c", "d", "e"]), pause=0.1)

    upstream.scripts["/v1/chat/completions"] = slow
    sidecar = await make_sidecar(vllm(upstream) + "      timeout: 0.3\n")
    stream = await sidecar.openai().chat.completions.create(
        model="mistral", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert [c.choices[0].delta.content async for c in stream][1:6] == ["a", "b", "c", "d", "e"]


async def test_stream_timeout_bounds_silence_between_chunks(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    events = chat_chunks("m", ["one", "two"])

    async def stalls(request: web.Request, got: Received) -> web.StreamResponse:
        await asyncio.sleep(0.6)  # slow to start: within `timeout`
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(events[0])
        await asyncio.sleep(LIMIT)  # then silent: beyond `stream_timeout`
        return response

    upstream.scripts["/v1/chat/completions"] = stalls
    sidecar = await make_sidecar(vllm(upstream) + "      timeout: 5\n      stream_timeout: 0.3\n")
    async with http.post(sidecar.url + "/v1/chat/completions", json=STREAM) as r:
        assert r.status == 200
        assert await r.content.readuntil(b"\n\n") == events[0]
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(r.read(), LIMIT)  # cut, not a clean end


async def test_a_stream_read_to_done_is_a_200_when_the_client_leaves_first(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client may close its connection once it has read [DONE] (some SDK versions do; this
    one reads on to the end, so a raw client stands in); an upstream whose chunked body ends a
    moment later must not turn a complete stream into a 499, nor lose its connection."""
    events = chat_chunks("m", ["every", " byte"])

    async def late_end(request: web.Request, got: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"".join(events))
        await asyncio.sleep(0.1)  # the chunked body's terminator comes late
        await response.write_eof()
        return response

    upstream.scripts["/v1/chat/completions"] = late_end
    sidecar = await make_sidecar(vllm(upstream))
    body = orjson.dumps(STREAM)
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.running.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        got = await asyncio.wait_for(reader.readuntil(b"data: [DONE]\n\n"), LIMIT)
        assert got.startswith(b"HTTP/1.1 200") and b'"content":" byte"' in got
        writer.close()  # at [DONE], before the end of the chunked body
        await asyncio.sleep(0.3)  # the upstream's end arrives, read for nobody
    gateway = sidecar.running.gateway
    gateway.access_log.flush()
    lines = [orjson.loads(line) for line in capfd.readouterr().out.splitlines() if line]
    assert [x["status"] for x in lines] == [200] * 3
    assert len({x["bytes"] for x in lines}) == 1 and lines[0]["bytes"] > len(b"".join(events))
    assert {k[3] for k in gateway.metrics.requests} == {200}
    # Each stream's upstream connection went back to the pool and was used again.
    assert len({r.peer for r in upstream.received}) == 1
