"""Where a request's CPU goes, without sockets: `python -m tests.bench.costs`.

`make bench` measures whole processes against nginx; this measures the sidecar's own Python
work in one process, with in-memory transports in place of sockets, so that system calls and
the machine's other processes do not blur it:

- floors: our HTTP/1.1 server protocol answering a canned reply (a task per request); the
  same plus one pooled upstream call (our pool and reply parser); the whole gateway on a
  chat request, with and without a key and the access log;
- each feature of the request path alone (timeit), from body parsing to the access log line.

Figures are the best of several rounds, in µs per request on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

from sidecar import config as configs
from sidecar import outbound, usage
from sidecar import request as requests
from sidecar.accesslog import AccessLog
from sidecar.headers import client_headers, reply_headers
from sidecar.http.message import Request, Responder
from sidecar.http.server import HttpProtocol, Listener
from sidecar.limits import KeyLimits
from sidecar.metrics import Metrics
from sidecar.origin import Origin
from sidecar.outcome import Outcome, record
from sidecar.router import Router
from sidecar.routes import Endpoint, match
from sidecar.server import start
from sidecar.state import State
from sidecar.upstream import Connection, Pool
from tests.bench.run import CANNED_CHAT, CHAT_BODY, KEY
from tests.bench.upstream import STREAM_BODY, STREAM_HEAD, USAGE_BODY

BODY = orjson.dumps(CHAT_BODY)
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(BODY), BODY)
)
REPLY_BODY = orjson.dumps(CANNED_CHAT)
REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Date: Tue, 01 Dec 2026 12:00:00 GMT\r\nServer: upstream\r\n\r\n%s"
    % (len(REPLY_BODY), REPLY_BODY)
)
TABLE = """
model_list:
  - model_name: bench
    litellm_params:
      model: hosted_vllm/bench-model
      api_base: http://127.0.0.1:9/v1
"""
KEYED = TABLE + f"general_settings:\n  master_key: {KEY}\n"
# (b)'s stream: 20 events in one read, and the usage chunk before [DONE] when it is asked for.
STREAM_REQUEST_BODY = orjson.dumps({**CHAT_BODY, "stream": True})
STREAM_REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
    % (KEY.encode(), len(STREAM_REQUEST_BODY), STREAM_REQUEST_BODY)
)


class _Upstream:
    """An upstream connection's transport that answers every request at once, in memory."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop

    def writelines(self, data: list[bytes]) -> None:
        sent = b"".join(data)
        if b'"stream":true' not in sent:
            reply = REPLY
        else:
            reply = STREAM_HEAD + (USAGE_BODY if b'"include_usage":true' in sent else STREAM_BODY)
        self.loop.call_soon(self.conn.data_received, reply)

    write = writelines

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Client:
    """A client connection's transport: each reply written starts the next request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, request: bytes) -> None:
        self.loop = loop
        self.request = request
        self.left = count
        self.done: asyncio.Future[None] = loop.create_future()
        self.protocol: HttpProtocol | None = None

    def write(self, data: bytes) -> None:
        if self.request is STREAM_REQUEST and not data.endswith(b"0\r\n\r\n"):
            return  # a piece of a stream: the request is done with its last chunk
        self.left -= 1
        if self.left <= 0:
            self.done.set_result(None)
        else:
            assert self.protocol is not None
            self.loop.call_soon(self.protocol.data_received, self.request)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.write(b"".join(parts))

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _in_memory(pool: Pool) -> None:
    loop = pool.loop

    async def connect(origin: Origin, timeout: float) -> Connection:
        conn = Connection(pool, origin)
        conn.connection_made(_Upstream(conn, loop))  # type: ignore[arg-type]
        return conn

    pool._connect = connect  # type: ignore[method-assign]


async def _serve(listener: Listener, count: int, rounds: int, request: bytes = REQUEST) -> float:
    """Best µs per request over `rounds` runs of `count` requests on one connection."""
    loop = asyncio.get_running_loop()
    best = float("inf")
    for _ in range(rounds):
        client = _Client(loop, count, request)
        protocol = listener()
        client.protocol = protocol
        protocol.connection_made(client)  # type: ignore[arg-type]
        began = time.process_time()
        protocol.data_received(request)
        await client.done
        best = min(best, (time.process_time() - began) * 1e6 / count)
        protocol.connection_lost(None)
    return best


async def floors(count: int, rounds: int, work: Path) -> dict[str, float]:
    pool = Pool()
    _in_memory(pool)
    origin = Origin("127.0.0.1", 9, False)
    fields = [("Content-Type", "application/json")]

    async def canned(request: Request, reply: Responder) -> None:
        reply.send(200, fields, REPLY_BODY)

    async def one_call(request: Request, reply: Responder) -> None:
        exchange = await pool.request(origin, (b"POST /v1/chat/completions HTTP/1.1\r\n\r\n",), 10)
        reply.send(200, fields, await exchange.read_all())

    Handler = Callable[[Request, Responder], Coroutine[Any, Any, None]]
    out: dict[str, float] = {}
    bare: list[tuple[str, Handler]] = [
        ("server protocol alone (canned reply)", canned),
        ("+ one pooled upstream call", one_call),
    ]
    for name, handler in bare:
        out[name] = await _serve(Listener(handler, lambda: (0, 0.0)), count, rounds)
    await pool.close()
    for name, text in (
        (
            "whole gateway: no key, no access log, no metrics",
            TABLE + "sidecar_settings:\n  access_log: false\n  metrics: false\n",
        ),
        (
            "whole gateway: no key, no access log",
            TABLE + "sidecar_settings:\n  access_log: false\n",
        ),
        ("whole gateway: master key and access log (as make bench)", KEYED),
    ):
        path = work / "table.yaml"
        path.write_text(text)
        running = await start(configs.load(path), "127.0.0.1", 0)
        running.gateway.access_log.fd = os.open(os.devnull, os.O_WRONLY)
        _in_memory(running.gateway.pool)
        out[name] = await _serve(running.listener, count, rounds)
        if text is KEYED:
            name = "whole gateway: a streamed chat of 20 events, as make bench (b)"
            out[name] = await _serve(running.listener, count, rounds, STREAM_REQUEST)
        await running.stop()
    return out


class _Quiet:
    closing = False
    write_paused = False

    def send(self, data: bytes, more: bytes | None = None) -> None:
        pass


def features(work: Path) -> dict[str, float]:
    path = work / "table.yaml"
    path.write_text(KEYED)
    config = configs.load(path)
    state = State.of(config)
    request = Request()
    request.method, request.target, request.path = "POST", "/v1/chat/completions", ""
    request.path = request.target
    request.headers = {
        "host": "sidecar",
        "content-type": "application/json",
        "authorization": f"Bearer {KEY}",
        "content-length": str(len(BODY)),
    }
    request.body = BODY
    body = requests.parse(BODY, Endpoint.CHAT)
    deployment = config.deployments[0]
    found = state.table.lookup("bench")
    assert found is not None
    router = Router(config.router)
    accept, encoding = client_headers(request.headers)
    upstream_fields = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(REPLY_BODY))),
        ("Date", "Tue, 01 Dec 2026 12:00:00 GMT"),
        ("Server", "upstream"),
    ]
    named = {"x-sidecar-deployment": deployment.id, "x-sidecar-attempts": "1"}
    key = state.keys.identify(request.headers)
    assert key is not None
    limits = KeyLimits()
    metrics = Metrics()
    log = AccessLog(fd=os.open(os.devnull, os.O_WRONLY))
    quiet = AccessLog(enabled=False)
    outcome = Outcome.of(request, time.perf_counter())
    replied = Responder(_Quiet(), request)  # type: ignore[arg-type]
    replied.send(200, upstream_fields, REPLY_BODY)
    steps: dict[str, Callable[[], object]] = {
        "route the path": lambda: match("POST", "/v1/chat/completions"),
        "request id (Outcome.of)": lambda: Outcome.of(request, 0.0),
        "check the key (SHA-256, lookup)": lambda: state.keys.identify(request.headers),
        "parse and validate the body (orjson)": lambda: requests.parse(BODY, Endpoint.CHAT),
        "find the model's group": lambda: state.table.lookup("bench"),
        "the key's rpm/tpm (none set)": lambda: limits.admit(key, 300),
        "choose a deployment": lambda: router.choose(found.group, set()),
        "build the upstream request (body re-encoded)": lambda: outbound.build(
            deployment, Endpoint.CHAT, body, None, accept, encoding
        ),
        "wide-integer check": lambda: requests.check_integers(BODY, BODY),
        "reply headers (hop-by-hop rules)": lambda: reply_headers(upstream_fields, named),
        "write the reply (head and body)": lambda: Responder(_Quiet(), request).send(  # type: ignore[arg-type]
            200, upstream_fields, REPLY_BODY
        ),
        "count the reply's tokens (usage)": lambda: usage.tokens(b"", REPLY_BODY),
        "metrics only (access log off)": lambda: record(
            metrics, quiet, request, Endpoint.CHAT, outcome, 200, replied
        ),
        "metrics and the access log line": lambda: record(
            metrics, log, request, Endpoint.CHAT, outcome, 200, replied
        ),
    }
    out = {}
    for name, step in steps.items():
        runs = 20_000
        out[name] = min(timeit.repeat(step, number=runs, repeat=5)) / runs * 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    with tempfile.TemporaryDirectory(prefix="sidecar-costs-") as tmp:
        work = Path(tmp)
        found_floors = runner(floors(args.requests, args.rounds, work))
        found_features = runner(_in_loop(features, work))
    print("| in one process, no sockets | µs per request |")
    print("| --- | ---: |")
    for name, cost in found_floors.items():
        print(f"| {name} | {cost:.1f} |")
    print()
    print("| step of a chat request, alone | µs |")
    print("| --- | ---: |")
    for name, cost in found_features.items():
        print(f"| {name} | {cost:.2f} |")
    print(
        f"| all of the above | {sum(found_features.values()) - found_features['metrics only (access log off)']:.2f} |"
    )
    return 0


async def _in_loop(fn: Callable[[Path], dict[str, float]], work: Path) -> dict[str, float]:
    return fn(work)  # the access log arms its flush timer on the running loop


if __name__ == "__main__":
    sys.exit(main())
