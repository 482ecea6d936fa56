"""Regressions found by a hostile review of the HTTP/1.1 server and the upstream pipe, each
named for what broke. Raw bytes in and out; upstreams that misbehave are tests.fakes.RawUpstream."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream, RawUpstream
from tests.test_gateway import vllm
from tests.test_http_server import BODY, CHAT, MOCK, Dial, closed, connect, post, read_reply

__all__ = ["connect"]  # the fixture, used by name

STREAM = orjson.dumps({**CHAT, "stream": True})
EVENTS = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    fake = await RawUpstream().start()
    yield fake
    await fake.stop()


@pytest.mark.parametrize(
    "reply",
    [
        SSE_HEAD + b"Connection: close\r\n\r\n" + EVENTS,  # a body that ends with the close
        b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + EVENTS,
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_stream_that_ends_with_the_upstreams_close_ends_for_the_client(
    reply: bytes, raw: RawUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    raw.reply = reply
    sidecar = await make_sidecar(vllm(raw))  # type: ignore[arg-type]
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(STREAM))
    status, headers, body = await read_reply(reader)  # chunked, to its last chunk
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == EVENTS


async def test_a_stream_whose_end_is_followed_by_junk_still_reaches_the_client_whole(
    raw: RawUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    head = SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    raw.pieces = [head, chunk(EVENTS) + b"0\r\n\r\nJUNK"]  # the end and junk in one read
    raw.pause = 0.05
    sidecar = await make_sidecar(vllm(raw))  # type: ignore[arg-type]
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(STREAM))
    status, _, body = await read_reply(reader)
    assert status == 200 and body == EVENTS


@pytest.mark.parametrize(
    ("reply", "settings", "status", "code"),
    [
        (SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", "", 502, "upstream_unreachable"),
        (
            SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n",
            "      stream_timeout: 0.3\n",
            504,
            "upstream_timeout",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            "",
            502,
            "upstream_unreachable",
        ),
    ],
    ids=["head-then-close", "head-then-silence", "switching-protocols"],
)
async def test_an_upstream_that_fails_before_any_body_byte_is_a_json_error(
    reply: bytes,
    settings: str,
    status: int,
    code: str,
    raw: RawUpstream,
    connect: Dial,
    make_sidecar: MakeSidecar,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw.reply = reply
    raw.close = "stream_timeout" not in settings
    if not raw.close:
        raw.pieces = [reply, b""]
        raw.pause = 5.0  # silent after the head
    sidecar = await make_sidecar(vllm(raw) + settings)  # type: ignore[arg-type]
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(STREAM))
    got, headers, body = await read_reply(reader)
    assert got == status, body
    assert orjson.loads(body)["error"]["code"] == code
    assert headers["x-sidecar-deployment"]
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage()]  # no traceback


async def test_upstream_trailers_are_not_relayed_as_headers(
    raw: RawUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    raw.reply = (
        SSE_HEAD + b"Transfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n" + chunk(EVENTS) + b"0\r\n"
        b"X-T: 1\r\n\r\n"
    )
    sidecar = await make_sidecar(vllm(raw))  # type: ignore[arg-type]
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(STREAM))
    status, headers, body = await read_reply(reader)
    assert status == 200 and body == EVENTS and "x-t" not in headers


async def test_a_request_trailer_is_not_taken_for_a_header(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream) + "general_settings:\n  master_key: sk-right\n")
    reader, writer = await connect(sidecar.running.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk(BODY)
        + b"0\r\nAuthorization: Bearer sk-right\r\n\r\n"
    )
    status, _, _ = await read_reply(reader)
    assert status == 401  # a key comes in the head, never in a trailer after the body
    assert not upstream.received


async def test_pipelined_requests_before_a_refused_one_are_all_answered(
    connect: Dial, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(MOCK)
    reader, writer = await connect(sidecar.running.port)
    mock = orjson.dumps({**CHAT, "model": "mock"})
    writer.write(post(mock) + post(mock) + post(mock) + b"GET / HTTP/1.1\r\nX: \x01\r\n\r\n")
    replies = [await read_reply(reader) for _ in range(4)]
    assert [r[0] for r in replies] == [200, 200, 200, 400]
    assert [r[1].get("connection") for r in replies] == [None, None, None, "close"]
    assert await closed(reader)


async def test_the_drain_answers_the_pipelined_requests_already_read(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))

    async def slow(request: object, got: object) -> object:
        await asyncio.sleep(0.3)
        from aiohttp import web

        return web.json_response({"object": "chat.completion"})

    upstream.scripts["/v1/chat/completions"] = slow  # type: ignore[assignment]
    reader, writer = await connect(sidecar.running.port)
    writer.write(post() + post())
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(sidecar.running.stop())
    await asyncio.sleep(0.05)
    writer.write(post())  # after the drain began: not read
    replies = [await read_reply(reader) for _ in range(2)]
    assert [r[0] for r in replies] == [200, 200]
    assert replies[1][1]["connection"] == "close"
    assert await closed(reader)
    await asyncio.wait_for(stopping, 5)
    assert len(upstream.received) == 2


async def test_an_upstream_error_never_relays_a_key_in_its_header_fields(
    raw: RawUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    body = b'{"error": {"message": "bad key"}}'
    raw.reply = (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
        b"X-Echo: Bearer sk-upstream-SECRET-1234\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    config = vllm(raw).replace("api_base:", "api_key: sk-upstream-SECRET-1234\n      api_base:")  # type: ignore[arg-type]
    sidecar = await make_sidecar(config)
    reader, writer = await connect(sidecar.running.port)
    writer.write(post())
    status, headers, _ = await read_reply(reader)
    assert status == 401 and "SECRET" not in headers["x-echo"]
    assert "[redacted]" in headers["x-echo"]


async def test_a_truncated_gzip_body_is_refused(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    packed = gzip.compress(BODY)
    writer.write(post(packed[: len(packed) - 12], b"Content-Encoding: gzip\r\n"))
    status, _, body = await read_reply(reader)
    assert status == 400 and b"malformed_body" in body
    assert not upstream.received


async def test_an_absolute_form_target_is_routed_by_its_path(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(path=b"http://sidecar.local:4000/v1/chat/completions?x=1"))
    status, _, _ = await read_reply(reader)
    assert status == 200 and upstream.last.path == "/v1/chat/completions"


async def test_a_client_that_leaves_lets_go_of_the_bodies_it_had_queued(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    """Pipelined bodies held for a client that left are released at once, not when the cycle
    collector next runs (the protocol and its parser refer to each other)."""

    async def slow(request: object, got: object) -> object:
        await asyncio.sleep(5)
        raise AssertionError("never answered")

    upstream.scripts["/v1/chat/completions"] = slow  # type: ignore[assignment]
    sidecar = await make_sidecar(vllm(upstream))
    _reader, writer = await connect(sidecar.running.port)
    big = orjson.dumps({**CHAT, "user": "x" * 500_000})
    writer.write(post() + post(big) + post(big))
    while not upstream.received:
        await asyncio.sleep(0.01)
    (protocol,) = sidecar.running.listener.connections
    assert len(protocol.pending) == 2
    writer.transport.abort()
    while protocol.transport is not None and not protocol.closed:
        await asyncio.sleep(0.01)
    assert not protocol.pending and protocol.request is None


async def test_a_model_named_beyond_latin_1_is_answered(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    """The deployment's name goes into a reply header: one written in Chinese is sent as
    UTF-8 (as aiohttp did) instead of failing the reply."""
    sidecar = await make_sidecar(vllm(upstream, name="模型", model="模型-7b"))
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(orjson.dumps({**CHAT, "model": "模型"})))
    status, headers, _ = await read_reply(reader)
    assert status == 200
    assert "模型" in headers["x-sidecar-deployment"].encode("latin-1").decode()


async def test_a_refusal_after_an_upgrade_request_in_the_same_write_is_answered(
    connect: Dial, make_sidecar: MakeSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    sidecar = await make_sidecar(MOCK)
    reader, writer = await connect(sidecar.running.port)
    upgrade = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    writer.write(upgrade * 40 + b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    replies = [await read_reply(reader) for _ in range(41)]
    assert [r[0] for r in replies] == [200] * 40 + [431]
    assert await closed(reader)
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage()]


async def test_a_chunked_request_that_asks_to_upgrade_is_refused(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunk(BODY) + b"0\r\n\r\n"
    )
    status, _, body = await read_reply(reader)
    assert status == 400 and b"malformed_request" in body
    assert await closed(reader)
    assert not upstream.received


async def test_pipelining_past_the_queue_is_refused_not_held_without_bound(
    connect: Dial, make_sidecar: MakeSidecar
) -> None:
    from sidecar.http.server import MAX_QUEUED

    sidecar = await make_sidecar(MOCK)
    reader, writer = await connect(sidecar.running.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * (MAX_QUEUED * 3))
    statuses = []
    while True:
        status, headers, body = await read_reply(reader)
        statuses.append(status)
        if headers.get("connection") == "close":
            break
    assert statuses[-1] == 503 and b"too_many_pipelined" in body
    assert set(statuses[:-1]) == {200} and len(statuses) <= MAX_QUEUED + 2
    assert await closed(reader)


async def test_a_request_half_read_when_the_drain_begins_is_finished(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    request = post()
    writer.write(request[:-10])
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(sidecar.running.stop())
    await asyncio.sleep(0.1)
    writer.write(request[-10:])
    status, headers, _ = await read_reply(reader)
    assert status == 200 and headers["connection"] == "close"
    await asyncio.wait_for(stopping, 5)


async def test_an_idle_pooled_connection_keeps_nothing_of_its_last_reply(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    from sidecar.http import response_parser

    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    writer.write(post())
    assert (await read_reply(reader))[0] == 200
    (idle,) = [c for conns in sidecar.running.gateway.pool.idle.values() for c in conns]
    assert idle.parser is not None
    assert idle.parser._end is response_parser._no_end  # not bound to the last exchange


async def test_a_client_that_reads_nothing_is_given_up_on(
    monkeypatch: pytest.MonkeyPatch,
    upstream: FakeUpstream,
    connect: Dial,
    make_sidecar: MakeSidecar,
) -> None:
    """Without a write timeout, a client that stops reading would hold its request, an
    upstream connection and an in-flight slot for as long as it liked."""
    from aiohttp import web

    from sidecar.http import server as http_server

    monkeypatch.setattr(http_server, "WRITE_TIMEOUT", 0.5)
    cut = asyncio.Event()

    async def firehose(request: web.Request, got: object) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for _ in range(10_000):
                await response.write(b"data: " + b"x" * 16_000 + b"\n\n")
        except (ConnectionError, asyncio.CancelledError):
            cut.set()
            raise
        return response

    upstream.scripts["/v1/chat/completions"] = firehose  # type: ignore[assignment]
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(STREAM))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(cut.wait(), 5)  # the sidecar dropped the client, then the upstream
    assert sidecar.running.gateway.metrics.in_flight == 0
