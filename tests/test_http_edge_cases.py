"""Regressions found by a hostile review of the HTTP/1.1 server and the upstream pipe, each
named for what broke. Raw bytes in and out; upstreams that misbehave are tests.fakes.RawUpstream."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream, RawUpstream, answers_after
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
    upstream.scripts["/v1/chat/completions"] = answers_after(0.3)
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


async def test_endless_request_trailers_are_a_431(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk(BODY)
        + b"0\r\nX-Trailer: "
    )
    for _ in range(20):  # 160 KB of one trailer field that never ends
        writer.write(b"a" * 8000)
    status, _, body = await read_reply(reader)
    assert status == 431 and b"request_header_fields_too_large" in body
    assert not upstream.received


async def test_endless_upstream_trailers_cut_the_stream(
    raw: RawUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    head = SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    raw.pieces = [head + chunk(EVENTS) + b"0\r\nX-Trailer: ", *[b"a" * 8000] * 20]
    raw.close = False
    sidecar = await make_sidecar(vllm(raw))  # type: ignore[arg-type]
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(STREAM))
    with pytest.raises(asyncio.IncompleteReadError):
        await read_reply(reader)  # the events came, then the connection was cut: no last chunk


async def test_a_secret_in_the_upstreams_reason_phrase_or_headers_never_reaches_the_client(
    raw: RawUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    body = b'{"error": {"message": "no"}}'
    raw.reply = (
        b"HTTP/1.1 401 key sk-upstream-SECRET-1234 rejected\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    raw.close = False
    config = vllm(raw).replace("api_base:", "api_key: sk-upstream-SECRET-1234\n      api_base:")  # type: ignore[arg-type]
    sidecar = await make_sidecar(config)
    reader, writer = await connect(sidecar.running.port)
    writer.write(post())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 401 ") and b"SECRET" not in head
    await reader.readexactly(len(body))
    ok = b'{"object": "chat.completion"}'
    raw.reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Echo: sk-upstream-SECRET-1234\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(ok), ok)
    )
    writer.write(post())
    status, headers, _ = await read_reply(reader)
    assert status == 200 and "SECRET" not in headers["x-echo"]


def _small_buffers(sidecar: object, client: socket.socket) -> None:
    """Kernel buffers of a few KiB on both ends, so that a reply of tens of KiB stays in the
    sidecar's own write buffer, under the point where writing pauses."""
    (protocol,) = sidecar.running.listener.connections  # type: ignore[attr-defined]
    server_side = protocol.transport.get_extra_info("socket")
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


async def test_a_closed_connection_whose_reply_is_never_read_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
    upstream: FakeUpstream,
    make_sidecar: MakeSidecar,
) -> None:
    from aiohttp import web

    from sidecar.http import server as http_server

    monkeypatch.setattr(http_server, "WRITE_TIMEOUT", 0.5)

    async def mid(request: web.Request, got: object) -> web.Response:
        return web.json_response({"object": "chat.completion", "pad": "x" * 40_000})

    upstream.scripts["/v1/chat/completions"] = mid  # type: ignore[assignment]
    sidecar = await make_sidecar(vllm(upstream))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", sidecar.running.port))
    try:
        await asyncio.sleep(0.05)
        _small_buffers(sidecar, sock)
        sock.sendall(post(extra=b"Connection: close\r\n"))  # and never read a byte
        listener = sidecar.running.listener
        await asyncio.sleep(0.3)
        (protocol,) = listener.connections
        assert not protocol.write_paused  # the case: buffered, yet under the pause
        for _ in range(30):
            await asyncio.sleep(0.1)
            if not listener.connections:
                break
        assert not listener.connections
    finally:
        sock.close()


async def test_a_slow_but_steady_reader_is_not_taken_for_a_gone_one(
    monkeypatch: pytest.MonkeyPatch,
    upstream: FakeUpstream,
    make_sidecar: MakeSidecar,
) -> None:
    """Reading 2 KiB every 50 ms drains the write buffer from its high to its low mark in
    longer than WRITE_TIMEOUT (1 s here); the client reads all along: it is not dropped."""
    from aiohttp import web

    from sidecar.http import server as http_server

    monkeypatch.setattr(http_server, "WRITE_TIMEOUT", 1.0)
    event = b"data: " + b"x" * 16_000 + b"\n\n"

    async def stream(request: web.Request, got: object) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(8):
            await response.write(event)
        await response.write(b"data: [DONE]\n\n")
        return response

    upstream.scripts["/v1/chat/completions"] = stream  # type: ignore[assignment]
    sidecar = await make_sidecar(vllm(upstream))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", sidecar.running.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        await asyncio.sleep(0.05)
        _small_buffers(sidecar, sock)
        writer.write(post(STREAM))
        got = b""
        while not got.endswith(b"0\r\n\r\n"):
            piece = await asyncio.wait_for(reader.read(2048), 5)
            assert piece, "the sidecar gave up on a client that was reading"
            got += piece
            await asyncio.sleep(0.05)
        assert got.count(b"data: x") == 8
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_a_100_continue_owed_to_a_queued_request_goes_to_no_other(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    upstream.scripts["/v1/chat/completions"] = answers_after(0.2)
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    third = post()
    writer.write(post() + post(extra=b"Expect: 100-continue\r\n") + third[:-5])
    await asyncio.sleep(0.6)  # the first two are answered meanwhile
    writer.write(third[-5:])
    seen = b""
    while seen.count(b"HTTP/1.1 200") < 3:
        seen += await asyncio.wait_for(reader.read(65536), 5)
    assert b"100 Continue" not in seen


async def test_queued_bodies_are_bounded_in_bytes_too(
    upstream: FakeUpstream, connect: Dial, make_sidecar: MakeSidecar
) -> None:
    from sidecar.http.server import MAX_QUEUED_BYTES

    upstream.scripts["/v1/chat/completions"] = answers_after(0.5)
    sidecar = await make_sidecar(vllm(upstream) + "sidecar_settings:\n  max_request_bytes: 0\n")
    _reader, writer = await connect(sidecar.running.port)
    big = post(orjson.dumps({**CHAT, "user": "x" * 3_000_000}))
    writer.write(post() + big * 6)
    await asyncio.sleep(0.3)
    (protocol,) = sidecar.running.listener.connections
    assert protocol._read_paused
    assert protocol._queued_bytes < MAX_QUEUED_BYTES + 2 * len(big)  # not all 18 MB read


class _Backlog:
    """A transport whose write buffer holds what a test says."""

    def __init__(self) -> None:
        self.size = 100_000
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.size

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1)

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


async def test_the_write_deadline_is_reset_by_any_progress_of_the_client() -> None:
    """nginx's send_timeout: the client is given up on only when it took nothing of its
    reply for WRITE_TIMEOUT, not when the buffer failed to drain in that time."""
    from sidecar.http.message import Request, Responder
    from sidecar.http.server import Listener

    async def handler(request: Request, reply: Responder) -> None:
        pass

    listener = Listener(handler, lambda: (0, 0.0))
    protocol = listener()
    transport = _Backlog()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.pause_writing()
    transport.size = 90_000  # it read 10 KB
    protocol._write_deadline = 0.0  # the deadline passed
    protocol.expire()
    assert not transport.aborted
    protocol._write_deadline = 0.0  # passed again, and nothing was read since
    protocol.expire()
    assert transport.aborted
