"""Our HTTP/1.1 server (sidecar/http/server.py) on the wire: what aiohttp's server did for us.

Every test speaks raw bytes to a real sidecar on 127.0.0.1 and reads the replies with a small
reader of its own here (not the sidecar's parser), and, where a request goes upstream, checks
what the recording fake upstream received.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web

from sidecar.http import server as http_server
from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream, Received, answers_after
from tests.test_gateway import vllm

LIMIT = 5.0
CHAT = {"model": "mistral", "messages": [{"role": "user", "content": "hi"}]}
BODY = orjson.dumps(CHAT)
MOCK = """
model_list:
  - model_name: mock
    litellm_params:
      model: openai/mock
      mock_response: "Hello there, friend."
"""


def post(body: bytes = BODY, extra: bytes = b"", path: bytes = b"/v1/chat/completions") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (path, extra, len(body), body)
    )


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One reply: status, headers (lower-case names), body (framed by length, chunks or EOF)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), LIMIT)
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), LIMIT)).strip(), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), LIMIT)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.read(), LIMIT)
    return status, headers, body


Dial = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def connect() -> AsyncIterator[Dial]:
    """Raw connections to a port, each closed when the test ends."""
    writers: list[asyncio.StreamWriter] = []

    async def dial(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        return reader, writer

    yield dial
    for writer in writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), LIMIT) == b""


async def test_pipelined_requests_are_answered_in_order(
    connect: Dial, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream) + MOCK.replace("model_list:\n", ""))
    reader, writer = await connect(sidecar.running.port)

    # Four requests in one write: a slow upstream call first, then quick ones behind it.
    slow = {"object": "chat.completion", "id": "slow"}
    upstream.scripts["/v1/chat/completions"] = answers_after(0.3, slow)
    writer.write(
        post()
        + b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n"
        + post(orjson.dumps({**CHAT, "model": "mock"}))
        + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    replies = [await read_reply(reader) for _ in range(4)]
    assert [r[0] for r in replies] == [200, 200, 200, 200]
    assert orjson.loads(replies[0][2])["id"] == "slow"
    assert orjson.loads(replies[1][2]) == {"status": "ok"}
    assert orjson.loads(replies[2][2])["choices"][0]["message"]["content"] == "Hello there, friend."
    assert orjson.loads(replies[3][2])["object"] == "list"
    ids = [r[1]["x-request-id"] for r in replies]
    assert len(set(ids)) == 4  # each reply its own request's id
    assert len(upstream.received) == 1


async def test_every_reply_has_date_server_and_its_framing(
    connect: Dial, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(MOCK)
    reader, writer = await connect(sidecar.running.port)
    writer.write(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_reply(reader)
    assert status == 200 and headers["server"] == "sidecar"
    parsed = time.strptime(headers["date"], "%a, %d %b %Y %H:%M:%S GMT")  # RFC 9110 5.6.7
    assert abs(time.mktime(parsed) - time.mktime(time.gmtime())) < 5
    assert headers["content-length"] == str(len(body))
    assert "connection" not in headers  # HTTP/1.1: kept alive without saying so


async def test_connection_close_is_honoured(connect: Dial, make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar(MOCK)
    reader, writer = await connect(sidecar.running.port)
    writer.write(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = await read_reply(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await closed(reader)


async def test_http_1_0(connect: Dial, make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar(MOCK)
    port = sidecar.running.port
    # Without keep-alive: one reply, then the connection closes.
    reader, writer = await connect(port)
    writer.write(b"GET /health/liveliness HTTP/1.0\r\n\r\n")
    status, headers, body = await read_reply(reader)
    assert status == 200 and headers["connection"] == "close" and body == b'{"status":"ok"}'
    assert await closed(reader)
    # With keep-alive asked for, it is said back and honoured.
    reader, writer = await connect(port)
    for _ in range(2):
        writer.write(b"GET /health/liveliness HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await read_reply(reader)
        assert status == 200 and headers["connection"] == "keep-alive"
    # A stream to an HTTP/1.0 client cannot be chunked: it ends with the connection.
    stream = orjson.dumps({**CHAT, "model": "mock", "stream": True})
    writer.write(
        b"POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(stream), stream)
    )
    status, headers, body = await read_reply(reader)
    assert status == 200 and "transfer-encoding" not in headers
    assert headers["connection"] == "close" and body.endswith(b"data: [DONE]\n\n")


async def test_chunked_request_body_reaches_upstream_whole(
    connect: Dial, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    pieces = [BODY[:7], BODY[7:20], BODY[20:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for i in range(0, len(chunked), 5):  # and in small pieces
        writer.write(chunked[i : i + 5])
        await writer.drain()
    status, _, _ = await read_reply(reader)
    assert status == 200
    assert upstream.last.json()["messages"] == CHAT["messages"]
    assert upstream.last.headers["Content-Length"] == str(len(upstream.last.body))


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_request_bodies_are_inflated(
    connect: Dial, encoding: str, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream) + "sidecar_settings:\n  max_request_bytes: 4000\n")
    packed = gzip.compress(BODY) if encoding == "gzip" else zlib.compress(BODY)
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(packed, b"Content-Encoding: %s\r\n" % encoding.encode()))
    status, _, _ = await read_reply(reader)
    assert status == 200 and upstream.last.json()["model"] == "mistralai/Mistral-7B"
    assert "Content-Encoding" not in upstream.last.headers
    # The limit holds for what a body inflates to: a small bomb is a 413.
    bomb = gzip.compress(b" " * 100_000)
    writer.write(post(bomb, b"Content-Encoding: gzip\r\n"))
    status, _, body = await read_reply(reader)
    assert status == 413 and b"request_too_large" in body


@pytest.mark.parametrize(
    ("encoding", "body", "status", "code"),
    [
        (b"gzip", b"not gzip at all", 400, b"malformed_body"),
        (b"br", b"\x0b\x02\x80", 415, b"unsupported_content_encoding"),
    ],
)
async def test_undecodable_request_bodies_are_refused(
    connect: Dial,
    encoding: bytes,
    body: bytes,
    status: int,
    code: bytes,
    upstream: FakeUpstream,
    make_sidecar: MakeSidecar,
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(body, b"Content-Encoding: %s\r\n" % encoding))
    got, headers, reply = await read_reply(reader)
    assert got == status and code in reply and headers["content-type"] == "application/json"
    assert not upstream.received
    # The connection is closed after, and the server goes on serving.
    assert await closed(reader)
    reader, writer = await connect(sidecar.running.port)
    writer.write(post())
    assert (await read_reply(reader))[0] == 200


@pytest.mark.parametrize(
    "smuggled",
    [
        # RFC 9112 6.3: both framings at once is how requests are smuggled.
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Content-Length: 5\r\n\r\n12345",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n folded: line\r\n\r\n",
        b"GET /health/liveliness HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
        b"GET /health/liveliness HTTP/1.1\nHost: x\n\n",
        b"GET /he\x00alth HTTP/1.1\r\n\r\n",
        b"GET /health/liveliness HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
)
async def test_malformed_and_smuggling_requests_are_a_json_400(
    connect: Dial, smuggled: bytes, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    writer.write(smuggled + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_reply(reader)
    assert status == 400, body
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "malformed_request"
    assert smuggled[:20] not in body  # never echoed
    assert await closed(reader)  # and nothing after it is read as a request
    assert not upstream.received
    reader, writer = await connect(sidecar.running.port)
    writer.write(post())
    assert (await read_reply(reader))[0] == 200


async def test_a_slow_head_is_408(
    connect: Dial, monkeypatch: pytest.MonkeyPatch, make_sidecar: MakeSidecar
) -> None:
    monkeypatch.setattr(http_server, "HEAD_TIMEOUT", 0.3)
    sidecar = await make_sidecar(MOCK)
    reader, writer = await connect(sidecar.running.port)
    writer.write(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n")  # and never the end
    status, _, body = await read_reply(reader)
    assert status == 408 and orjson.loads(body)["error"]["code"] == "head_timeout"
    assert await closed(reader)


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    connect: Dial, monkeypatch: pytest.MonkeyPatch, make_sidecar: MakeSidecar
) -> None:
    monkeypatch.setattr(http_server, "KEEPALIVE_TIMEOUT", 0.3)
    sidecar = await make_sidecar(MOCK)
    reader, writer = await connect(sidecar.running.port)
    writer.write(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_reply(reader))[0] == 200
    started = time.monotonic()
    assert await closed(reader)  # silently: no reply to a request never made
    assert time.monotonic() - started >= 0.25


async def test_a_body_over_the_declared_limit_is_413_before_it_is_sent(
    connect: Dial, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream) + "sidecar_settings:\n  max_request_bytes: 1000\n")
    reader, writer = await connect(sidecar.running.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n"
    )
    status, headers, body = await read_reply(reader)
    assert status == 413 and headers["connection"] == "close"
    assert b"1000 bytes" in body
    assert not upstream.received


async def test_a_slow_reader_holds_the_upstream_back(
    connect: Dial, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """Write backpressure: while the client does not read, the sidecar stops reading the
    upstream, so the upstream's writes wait too; nothing is lost once the client reads."""
    event = b"data: " + b"x" * 16_000 + b"\n\n"
    total = 4000  # events: 64 MB, far more than every buffer on the way can hold
    sent = 0

    async def firehose(request: web.Request, got: Received) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(total):
            await response.write(event)  # waits while the sidecar does not read
            sent += 1
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    upstream.scripts["/v1/chat/completions"] = firehose
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    writer.write(post(orjson.dumps({**CHAT, "stream": True})))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT)
    await asyncio.sleep(1.0)  # the client reads nothing for a second
    held = sent
    assert held < total // 4, held  # the upstream was held back (at most a few MB on the way)
    received = 0
    while True:
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), LIMIT)
        size = int(line.strip(), 16)
        data = await asyncio.wait_for(reader.readexactly(size + 2), LIMIT)
        if size == 0:
            break
        received += data.count(b"data: x")
    assert received == total and sent == total


async def test_an_upgrade_request_is_answered_over_http_1_1_and_the_connection_goes_on(
    connect: Dial, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """`curl --http2` on an http:// URL asks to Upgrade to h2c; the sidecar never switches
    protocols, so it answers over HTTP/1.1 (as RFC 9110 7.8 allows), body and all, and the
    client goes on in HTTP/1.1."""
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await connect(sidecar.running.port)
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"
    writer.write(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n")
    status, headers, body = await read_reply(reader)
    assert status == 200 and body == b'{"status":"ok"}' and "upgrade" not in headers
    # A POST asking the same: llhttp leaves its body to us, and it arrives whole; a request
    # pipelined behind it in the same write is read too.
    writer.write(post(extra=upgrade) + b"GET /health/readiness HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_reply(reader)
    assert status == 200, body
    assert upstream.last.json()["messages"] == CHAT["messages"]
    status, _, body = await read_reply(reader)
    assert status == 200 and body == b'{"status":"ready"}'
    # And split across writes.
    request = post(extra=upgrade)
    cut = request.index(b"\r\n\r\n") + 10
    writer.write(request[:cut])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(request[cut:])
    status, _, body = await read_reply(reader)
    assert status == 200, body
    assert upstream.last.json()["messages"] == CHAT["messages"]


async def test_the_drain_closes_idle_connections_and_lets_a_request_in_hand_finish(
    connect: Dial, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    slow = {"object": "chat.completion", "id": "slow"}
    upstream.scripts["/v1/chat/completions"] = answers_after(0.5, slow)
    sidecar = await make_sidecar(vllm(upstream))
    idle_reader, idle_writer = await connect(sidecar.running.port)
    idle_writer.write(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_reply(idle_reader))[0] == 200
    reader, writer = await connect(sidecar.running.port)
    writer.write(post())
    await asyncio.sleep(0.1)  # the request is with the upstream
    stopping = asyncio.create_task(sidecar.running.stop())
    assert await closed(idle_reader)  # at once, not after the request in hand
    assert not stopping.done()
    status, headers, body = await read_reply(reader)
    assert status == 200 and orjson.loads(body)["id"] == "slow"
    assert headers["connection"] == "close"
    await asyncio.wait_for(stopping, LIMIT)
