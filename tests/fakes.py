"""A fake OpenAI-compatible upstream that records every request it receives.

It answers chat, text completions and embeddings like an OpenAI server would, and a test may
replace the answer for one path with a script of its own (errors, stalls, slow streams).
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import hashlib
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

Script = Callable[[web.Request, "Received"], Awaitable[web.StreamResponse]]

REPORTED_SUFFIX = "-2024-08-06"  # upstreams report a dated model name, as OpenAI does


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    peer: tuple[str, int] | None = None  # the sidecar's end of the connection

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class FakeUpstream:
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, Script] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def last(self) -> Received:
        return self.received[-1]

    async def start(self) -> FakeUpstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # audio forms are large
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a handler learns that the sidecar closed the connection.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        got = Received(
            request.method,
            request.path,
            dict(request.query),
            request.headers,
            await request.read(),
            tuple(peer) if peer else None,
        )
        self.received.append(got)
        script = self.scripts.get(request.path)
        if script is not None:
            return await script(request, got)
        surface = SURFACE.get(request.path)
        if surface is not None:
            return await surface(self, request, got)
        if request.path.endswith("/chat/completions"):
            return await chat(request, got)
        if request.path.endswith("/completions"):
            return await completion(request, got)
        if request.path.endswith("/embeddings"):
            return embeddings(got)
        return web.json_response({"error": {"message": "no such route"}}, status=404)


def fails_first(count: int, then: Script) -> Script:
    """A script that answers its first `count` calls with a 503, then as `then` does."""
    calls = 0

    async def script(request: web.Request, got: Received) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls <= count:
            return web.json_response({"error": {"message": "blip"}}, status=503)
        return await then(request, got)

    return script


def free_port() -> int:
    """A loopback port nothing listens on (now): for a server to start on, or to be refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dies_after(first: bytes) -> Script:
    """A stream that sends `first`, then drops the connection: no end of the chunked body."""

    async def script(request: web.Request, got: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(first)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response

    return script


def held_after_first(events: list[bytes], release: asyncio.Event, limit: float) -> Script:
    """A stream that sends its first event, then the rest only once `release` is set (by a
    client that has the first): a gateway that buffers the stream deadlocks it."""

    async def script(request: web.Request, got: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(events[0])
        await asyncio.wait_for(release.wait(), limit)
        for event in events[1:]:
            await response.write(event)
        await response.write_eof()
        return response

    return script


def answers_after(seconds: float, reply: dict[str, Any] | None = None) -> Script:
    """A script that keeps each call waiting `seconds`, then answers 200 with `reply` (a bare
    chat.completion object by default): a slow upstream."""

    async def script(request: web.Request, got: Received) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response(reply or {"object": "chat.completion"})

    return script


def chat_chunks(model: str, words: list[str]) -> list[bytes]:
    """A chat stream as an OpenAI server sends it, one event per chunk."""
    created = int(time.time())
    head = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    events = [
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
    ]
    events += [
        {**head, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
        for w in words
    ]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def usage_chunk(model: str, prompt: int, completion: int) -> bytes:
    """The chunk include_usage adds before [DONE]: no choices, the stream's usage."""
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
    chunk |= {"model": model, "choices": [], "usage": usage | {"total_tokens": prompt + completion}}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def sse(request: web.Request, events: list[bytes], pause: float = 0.0) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event in events:
        await response.write(event)
        if pause:
            await asyncio.sleep(pause)
    await response.write_eof()
    return response


async def chat(request: web.Request, got: Received) -> web.StreamResponse:
    body = got.json()
    model = body["model"] + REPORTED_SUFFIX
    if body.get("stream"):
        events = chat_chunks(model, ["Hello", " from", " upstream"])
        if (body.get("stream_options") or {}).get("include_usage"):
            events.insert(-1, usage_chunk(model, 5, 3))
        return await sse(request, events)
    return web.json_response(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from upstream"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    )


async def completion(request: web.Request, got: Received) -> web.StreamResponse:
    body = got.json()
    model = body["model"] + REPORTED_SUFFIX
    n = body.get("n", 1)
    head = {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    usage = {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    if body.get("stream"):
        events = [
            b"data: "
            + orjson.dumps(
                {**head, "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": f}]}
            )
            + b"\n\n"
            for t, f in (("Once", None), (" upon", None), (" a time", "length"))
            for i in range(n)
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(
                b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
            )
        return await sse(request, [*events, b"data: [DONE]\n\n"])
    return web.json_response(
        {
            **head,
            "choices": [
                {
                    "text": "Once upon a time",
                    "index": i,
                    "logprobs": None,
                    "finish_reason": "length",
                }
                for i in range(n)
            ],
            "usage": usage,
        }
    )


def embeddings(got: Received) -> web.Response:
    body = got.json()
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    vector = [0.5, -0.25, 0.125, 1.0]
    data = []
    for i, _ in enumerate(inputs):
        value: Any = vector
        if body.get("encoding_format") == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": body["model"] + REPORTED_SUFFIX,
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    )


@dataclass
class _Loopback:
    """A raw asyncio server on 127.0.0.1:0, for upstreams that misbehave below HTTP: the
    subclass's `_serve` handles each connection, which is closed when it returns or at stop."""

    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # handlers still waiting or pausing
                writer.close()
            await self._server.wait_closed()
            await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class HangUp(_Loopback):
    """An upstream that reads a whole request head and hangs up without a byte of reply: with
    a FIN, or with a reset (SO_LINGER 0) when `reset`. It records the request lines it read."""

    reset: bool = False
    received: list[bytes] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        self.received.append(head.split(b"\r\n", 1)[0])
        if self.reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass
class RawUpstream(_Loopback):
    """An upstream that answers every request with `reply`, bytes exactly as given (written in
    one write, or in `pieces` with `pause` seconds between), then closes when `close`, else
    keeps the connection for more. For replies no well-behaved server library would send."""

    reply: bytes = b""
    pieces: list[bytes] | None = None
    pause: float = 0.0
    close: bool = True
    requests: int = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                for piece in self.pieces or [self.reply]:
                    writer.write(piece)
                    await writer.drain()
                    if self.pause:
                        await asyncio.sleep(self.pause)
                if self.close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass


# The rest of the surface (vLLM's routes): Responses, Messages, rerank, audio, tokenize.


async def responses(fake: FakeUpstream, request: web.Request, got: Received) -> web.StreamResponse:
    """A Responses API reply whose id names this upstream (its port) and counts its calls."""
    body = got.json()
    made = {
        "id": f"resp_{fake.port}_{len(fake.received)}",
        "object": "response",
        "created_at": int(time.time()),
        "model": body["model"] + REPORTED_SUFFIX,
        "status": "completed",
        "previous_response_id": body.get("previous_response_id"),
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": "Hello from upstream", "annotations": []}
                ],
            }
        ],
        "usage": {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8},
    }
    if not body.get("stream"):
        return web.json_response(made)
    events = [
        (
            "response.created",
            {
                "type": "response.created",
                "response": {**made, "status": "in_progress", "output": []},
            },
        )
    ]
    events += [
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": w,
            },
        )
        for w in ("Hello", " from", " upstream")
    ]
    events.append(("response.completed", {"type": "response.completed", "response": made}))
    return await sse(request, [named_event(n, e) for n, e in events])


def named_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_events(model: str, words: list[str]) -> list[bytes]:
    """An Anthropic Messages stream, as its API sends one."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1},
        },
    }
    events = [
        ("message_start", start),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    events += [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
        )
        for w in words
    ]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 3},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [named_event(n, e) for n, e in events]


async def messages(fake: FakeUpstream, request: web.Request, got: Received) -> web.StreamResponse:
    body = got.json()
    model = body["model"] + REPORTED_SUFFIX
    if body.get("stream"):
        return await sse(request, message_events(model, ["Hello", " from", " upstream"]))
    return web.json_response(
        {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "Hello from upstream"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 3},
        }
    )


async def count_tokens(
    fake: FakeUpstream, request: web.Request, got: Received
) -> web.StreamResponse:
    return web.json_response({"input_tokens": len(orjson.dumps(got.json()["messages"])) // 4})


async def rerank(fake: FakeUpstream, request: web.Request, got: Received) -> web.StreamResponse:
    body = got.json()
    results = [
        {"index": i, "relevance_score": 1.0 / (i + 1), "document": {"text": d}}
        for i, d in enumerate(body["documents"])
    ]
    return web.json_response(
        {
            "id": "rerank-fake",
            "model": body["model"] + REPORTED_SUFFIX,
            "results": results,
            "usage": {"total_tokens": 11},
        }
    )


async def audio(fake: FakeUpstream, request: web.Request, got: Received) -> web.StreamResponse:
    """The text is the SHA-256 of the file as it arrived, and what the form's fields were.
    The form is read by the standard library's MIME parser, not by anything of ours."""
    head = b"Content-Type: " + got.headers["Content-Type"].encode() + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + got.body)
    fields: dict[str, str] = {}
    digest = filename = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if part.get_filename() is not None:
            digest, filename = hashlib.sha256(data).hexdigest(), part.get_filename()
        else:
            fields[str(name)] = data.decode()
    return web.json_response({"text": f"sha256:{digest}", "fields": fields, "filename": filename})


async def tokenize(fake: FakeUpstream, request: web.Request, got: Received) -> web.StreamResponse:
    body = got.json()
    if request.path == "/detokenize":
        return web.json_response({"prompt": " ".join(f"t{t}" for t in body["tokens"])})
    words = str(body.get("prompt", "")).split()
    return web.json_response(
        {"tokens": list(range(len(words))), "count": len(words), "max_model_len": 4096}
    )


SURFACE: dict[
    str, Callable[[FakeUpstream, web.Request, Received], Awaitable[web.StreamResponse]]
] = {
    "/v1/responses": responses,
    "/v1/messages": messages,
    "/v1/messages/count_tokens": count_tokens,
    "/v1/rerank": rerank,
    "/v1/audio/transcriptions": audio,
    "/v1/audio/translations": audio,
    "/tokenize": tokenize,
    "/detokenize": tokenize,
}
