"""A fast fake OpenAI upstream for the benchmark: a raw asyncio protocol with canned replies.

It parses just enough HTTP/1.1 (request line, Content-Length, keep-alive) to serve the
benchmark's clients and proxies, so that it is never the bottleneck. Replies:
- POST .../chat/completions: a chat.completion, or, with "stream": true in the body, a
  chunked text/event-stream of 20 SSE events (see SEPARATE_WRITES);
- POST .../embeddings: one 1536-dimension vector;
- a body with "bench_hold": S sends the first stream chunk, then the rest S seconds later;
- a body with "bench_pace": P and "bench_events": N streams N events, one write each, P seconds
  apart, as a model server sends tokens; each carries "bench_t", the monotonic clock when it was
  written, so that a client can tell how late it arrived.

    python -m tests.bench.upstream --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
from typing import cast

import orjson

STREAM_CHUNKS = 20
DIMENSIONS = 1536

_HOLD = re.compile(rb'"bench_hold"\s*:\s*([0-9.]+)')
_PACE = re.compile(rb'"bench_pace"\s*:\s*([0-9.]+)')
_EVENTS = re.compile(rb'"bench_events"\s*:\s*([0-9]+)')
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHAT = _response(
    "200 OK",
    "application/json",
    orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "The quick brown fox jumps over the lazy dog. " * 4,
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 220, "completion_tokens": 40, "total_tokens": 260},
        }
    ),
)

_rng = random.Random(7)
EMBEDDING = _response(
    "200 OK",
    "application/json",
    orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": 0,
                    "embedding": [round(_rng.uniform(-0.1, 0.1), 9) for _ in range(DIMENSIONS)],
                }
            ],
            "model": "bench-embed",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    ),
)

STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
STREAM_EVENTS = [
    _chunk(
        b"data: "
        + orjson.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": "bench-model",
                "choices": [
                    {"index": 0, "delta": {"content": f"token{i} "}, "finish_reason": None}
                ],
            }
        )
        + b"\n\n"
    )
    for i in range(STREAM_CHUNKS - 1)
] + [_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"]
# What stream_options.include_usage adds before [DONE], as OpenAI and vLLM send it.
USAGE_EVENT = _chunk(
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","choices":[],"usage":{"prompt_tokens":220,"completion_tokens":19,'
    b'"total_tokens":239}}\n\n'
)
USAGE_EVENTS = [*STREAM_EVENTS[:-1], USAGE_EVENT, STREAM_EVENTS[-1]]

STREAM_BODY = b"".join(STREAM_EVENTS)
USAGE_BODY = b"".join(USAGE_EVENTS)
TOKEN_EVENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","bench_t":%.6f,"choices":[{"index":0,"delta":{"content":" tok"},'
    b'"finish_reason":null}]}\n\n'
)
# One write per event makes each its own TCP segment, as a server flushing every token does. It
# is realistic but costs this process and the load generator (which share a core) so much that
# they, not the proxy, would set the pace; so by default the events go out in one write.
SEPARATE_WRITES = False

# An OTLP/HTTP collector's answer (an empty ExportTraceServiceResponse): the tracing target's.
TRACES_TAKEN = _response("200 OK", "application/x-protobuf", b"")
NOT_FOUND = _response("404 Not Found", "application/json", b'{"error":{"message":"no route"}}')


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                line_end = lower.find(b"\r\n", at)
                length = int(lower[at + 15 : line_end if line_end >= 0 else None])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[end + 4 : total]
            self.buffer = self.buffer[total:]
            self.respond(head[: head.find(b"\r\n")], body)

    def respond(self, request_line: bytes, body: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        path = request_line.split(b" ", 2)[1]
        if path.endswith(b"/chat/completions"):
            if _STREAM.search(body):
                pace, events = _PACE.search(body), _EVENTS.search(body)
                if pace and events:
                    usage = _INCLUDE_USAGE.search(body) is not None
                    self.paced(float(pace.group(1)), int(events.group(1)), usage)
                    return
                hold = _HOLD.search(body)
                usage = _INCLUDE_USAGE.search(body) is not None
                self.stream(float(hold.group(1)) if hold else 0.0, usage)
            else:
                transport.write(CHAT)
        elif path.endswith(b"/embeddings"):
            transport.write(EMBEDDING)
        elif path == b"/v1/traces":
            transport.write(TRACES_TAKEN)
        else:
            transport.write(NOT_FOUND)

    def stream(self, hold: float, usage: bool) -> None:
        """The head and the 20 events (and the usage chunk when asked); with a hold, the first
        event comes at once and the rest `hold` seconds later."""
        assert self.transport is not None
        transport = self.transport
        transport.write(STREAM_HEAD)
        if hold:
            transport.write(STREAM_EVENTS[0])
            asyncio.get_running_loop().call_later(hold, self.finish, 1, usage)
        else:
            self.finish(0, usage)

    def paced(self, pace: float, events: int, usage: bool) -> None:
        """A token stream: one event per write, `pace` seconds apart, then [DONE]."""
        assert self.transport is not None
        self.transport.write(STREAM_HEAD)
        loop = asyncio.get_running_loop()

        def send(left: int) -> None:
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if not left:
                end = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
                transport.write(USAGE_EVENT + end if usage else end)
                return
            transport.write(_chunk(TOKEN_EVENT % time.monotonic()))
            loop.call_later(pace, send, left - 1)

        send(events)

    def finish(self, start: int, usage: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        events, whole = (USAGE_EVENTS, USAGE_BODY) if usage else (STREAM_EVENTS, STREAM_BODY)
        if SEPARATE_WRITES:
            for event in events[start:]:
                transport.write(event)
        else:
            transport.write(whole if start == 0 else b"".join(events[start:]))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--separate-writes", action="store_true", help="one write per SSE event")
    args = parser.parse_args()
    global SEPARATE_WRITES
    SEPARATE_WRITES = args.separate_writes
    import uvloop

    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
