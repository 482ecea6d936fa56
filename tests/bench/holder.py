"""Holds N streams open through a proxy at once, for the benchmark's open-streams scenario.

Each connection sends one streamed chat request whose body asks the bench upstream to hold
the stream (`bench_hold`): the first event comes at once, the rest after the hold. Prints
`OPEN <opened> <failed>` once every stream has its first event (or failed), then
`DONE <completed> <failed>` when all have ended.

    python -m tests.bench.holder --port 4000 --streams 10000 --hold 30
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import cast

import orjson

CONNECTS_AT_ONCE = 200  # connection attempts in flight; keeps the proxy's accept queue short


class Stream(asyncio.Protocol):
    def __init__(
        self, request: bytes, opened: asyncio.Future[bool], done: asyncio.Future[bool]
    ) -> None:
        self.request = request
        self.opened = opened
        self.done = done
        self.seen = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.seen += data
            end = self.seen.find(b"\r\n\r\n")
            if end >= 0 and b"data: " in self.seen[end:]:
                self.opened.set_result(self.seen.startswith(b"HTTP/1.1 200"))
        if data.endswith(b"0\r\n\r\n") and not self.done.done():
            self.done.set_result(True)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.opened, self.done):
            if not future.done():
                future.set_result(False)


async def hold(host: str, port: int, streams: int, seconds: float, auth: str) -> None:
    loop = asyncio.get_running_loop()
    body = orjson.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": "hold on"}],
            "stream": True,
            "bench_hold": seconds,
        }
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {auth}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    request = head + body
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
    opened: list[asyncio.Future[bool]] = []
    done: list[asyncio.Future[bool]] = []

    async def open_one() -> None:
        first: asyncio.Future[bool] = loop.create_future()
        end: asyncio.Future[bool] = loop.create_future()
        opened.append(first)
        done.append(end)
        async with gate:
            try:
                await loop.create_connection(lambda: Stream(request, first, end), host, port)
            except OSError:
                first.set_result(False)
                end.set_result(False)
                return
            await asyncio.wait_for(asyncio.shield(first), seconds)

    results = await asyncio.gather(*(open_one() for _ in range(streams)), return_exceptions=True)
    failed_open = sum(1 for r in results if isinstance(r, BaseException))
    ok = sum(1 for f in opened if f.done() and f.result())
    print(f"OPEN {ok} {streams - ok}", flush=True)
    finished = await asyncio.wait_for(asyncio.gather(*done), seconds * 3)
    completed = sum(finished)
    print(f"DONE {completed} {streams - completed} {failed_open}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--auth", default="")
    args = parser.parse_args()
    import uvloop

    try:
        uvloop.run(hold(args.host, args.port, args.streams, args.hold, args.auth))
    except TimeoutError:
        print("DONE 0 -1 timeout", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
