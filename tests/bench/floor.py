"""The design's floor: a proxy built from the sidecar's own parts and nothing else.

`python -m tests.bench.floor --port P --upstream U` serves one route with the sidecar's HTTP/1.1
server protocol (`sidecar.http`) and upstream pool (`sidecar.upstream`): read the body, parse it
with orjson, rewrite `model`, encode it again, send it on a pooled keep-alive connection, and relay
the reply (whole, or piped as it arrives when it is a stream). No key, routing table, limits,
metrics or access log. `make bench` runs it as the `floor` target, so that the gap between nginx
and the sidecar splits into what the protocols cost and what the gateway's features cost.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
import uvloop

from sidecar.http.message import Request, Responder
from sidecar.http.server import Listener
from sidecar.origin import Origin
from sidecar.upstream import Pool

NAMES = {"bench": b"bench-model", "bench-embed": b"bench-embed"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream))


async def serve(port: int, upstream: int) -> None:
    pool = Pool()
    origin = Origin("127.0.0.1", upstream, False)
    host = f"Host: 127.0.0.1:{upstream}\r\n".encode()

    async def handle(request: Request, reply: Responder) -> None:
        if request.method == "GET":  # readiness, for the bench's start-up wait
            reply.send(200, [("Content-Type", "application/json")], b"{}")
            return
        body = orjson.loads(request.body)
        body["model"] = NAMES.get(body.get("model"), b"").decode()
        data = orjson.dumps(body)
        head = (
            b"POST /v1%s HTTP/1.1\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (
                request.path.removeprefix("/v1").encode(),
                host,
                len(data),
            )
        )
        exchange = await pool.request(origin, (head, data), 60.0)
        fields = [("Content-Type", ct) for name, ct in exchange.headers if name == "content-type"]
        if body.get("stream"):
            reply.start(exchange.status, fields)
            exchange.pipe(reply.pipe)
            while (settled := exchange.settled()) is not None:
                await settled
                if exchange.blocked:
                    await reply.drain()
                    exchange.unblock()
            exchange.close()
        else:
            reply.send(exchange.status, fields, await exchange.read_all())

    listener = Listener(handle, lambda: (0, 0.0))
    await listener.listen("127.0.0.1", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
