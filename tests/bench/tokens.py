"""Token streams through a proxy, for the benchmark: S streams at once, each N events P seconds
apart, written one by one by the bench upstream (`bench_pace`). For every event it takes how
late it arrived (now minus the `bench_t` the upstream wrote into it, both the monotonic clock of
this machine), and prints `TOKENS <events> <p50 ms> <p99 ms> <failed streams>`.

    python -m tests.bench.tokens --port 4000 --streams 256 --events 50 --pace 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import cast

import orjson

STAMP = b'"bench_t":'


class Stream(asyncio.Protocol):
    def __init__(self, request: bytes, done: asyncio.Future[bool], late: list[float]) -> None:
        self.request = request
        self.done = done
        self.late = late
        self.pending = b""
        self.ok = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.ok and data.startswith(b"HTTP/1.1 200"):
            self.ok = True
        text = self.pending + data
        end = text.rfind(b"\n\n")  # whole events only: a stamp may be cut between reads
        self.pending = text[end + 2 :] if end >= 0 else text
        at = text.find(STAMP)
        while 0 <= at < end:
            start = at + len(STAMP)
            stop = text.find(b",", start)
            self.late.append(now - float(text[start:stop]))
            at = text.find(STAMP, stop)
        if text.endswith(b"0\r\n\r\n") and not self.done.done():
            self.done.set_result(self.ok)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def run(host: str, port: int, streams: int, events: int, pace: float, auth: str) -> None:
    loop = asyncio.get_running_loop()
    body = orjson.dumps(
        {
            "model": "bench",
            "messages": [{"role": "user", "content": "count"}],
            "stream": True,
            "bench_pace": pace,
            "bench_events": events,
        }
    )
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {auth}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    late: list[float] = []
    done: list[asyncio.Future[bool]] = []
    for _ in range(streams):
        end: asyncio.Future[bool] = loop.create_future()
        done.append(end)
        try:
            await loop.create_connection(lambda end=end: Stream(request, end, late), host, port)
        except OSError:
            end.set_result(False)
        # Spread the starts over one pace, so that the streams' events interleave evenly.
        await asyncio.sleep(pace / streams)
    finished = await asyncio.wait_for(asyncio.gather(*done), events * pace * 10 + 30)
    late.sort()
    p50 = late[len(late) // 2] * 1000 if late else 0.0
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))] * 1000 if late else 0.0
    print(f"TOKENS {len(late)} {p50:.3f} {p99:.3f} {streams - sum(finished)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--pace", type=float, default=0.02)
    parser.add_argument("--auth", default="")
    args = parser.parse_args()
    import uvloop

    uvloop.run(run(args.host, args.port, args.streams, args.events, args.pace, args.auth))


if __name__ == "__main__":
    main()
