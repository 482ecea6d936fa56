"""The response cache end to end: the official SDK against a sidecar and the recording fake
upstream, in memory and on a real redis-server shared by two sidecar processes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from sidecar import config as configs
from sidecar.cache.local import LocalStore
from sidecar.describe import describe
from tests.conftest import MakeSidecar, Sidecar
from tests.fakes import FakeUpstream, RawUpstream, Received, chat_chunks, dies_after, free_port, sse
from tests.redis_server import RedisServer
from tests.test_cli import wait_ready
from tests.test_gateway import vllm
from tests.test_ops import start, stop

KEY_A, KEY_B = "sk-tenant-a-123", "sk-tenant-b-123"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}


def table(upstream: FakeUpstream, cache: str = "", keys: str = "", more: str = "") -> str:
    return (
        vllm(upstream, "m", "m")
        + f"""litellm_settings:
  cache: true
  cache_params:
    ttl: 600
{cache}
{more}
sidecar_settings:
  keys:
    - name: a
      key: {KEY_A}
      {keys}
    - name: b
      key: {KEY_B}
"""
    )


def upstream_calls(upstream: FakeUpstream, suffix: str = "/chat/completions") -> list[Received]:
    return [r for r in upstream.received if r.path.endswith(suffix)]


async def post(
    http: aiohttp.ClientSession,
    sidecar: Sidecar,
    body: dict[str, object],
    path: str = "/v1/chat/completions",
    key: str = KEY_A,
    **headers: str,
) -> tuple[int, str | None, bytes]:
    async with http.post(
        sidecar.url + path, json=body, headers={"Authorization": f"Bearer {key}", **headers}
    ) as r:
        return r.status, r.headers.get("x-sidecar-cache"), await r.read()


async def test_hit_and_miss_on_each_endpoint(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(table(upstream))
    client = sidecar.openai(KEY_A)
    for call, suffix in (
        (lambda: client.chat.completions.with_raw_response.create(**CHAT), "/chat/completions"),
        (
            lambda: client.completions.with_raw_response.create(model="m", prompt="Once"),
            "/v1/completions",
        ),
        (
            lambda: client.embeddings.with_raw_response.create(model="m", input="the fox"),
            "/embeddings",
        ),
    ):
        first = await call()  # type: ignore[no-untyped-call]
        second = await call()  # type: ignore[no-untyped-call]
        assert first.headers["x-sidecar-cache"] == "miss"
        assert second.headers["x-sidecar-cache"] == "hit"
        assert second.content == first.content  # the same bytes, ids and all
        assert first.parse() == second.parse()
        assert len(upstream_calls(upstream, suffix)) == 1  # the hit called no upstream


async def test_a_stream_is_replayed_as_the_same_events(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(table(upstream))
    client = sidecar.openai(KEY_A)
    live = [c async for c in await client.chat.completions.create(**STREAM)]  # type: ignore[call-overload]
    again = [c async for c in await client.chat.completions.create(**STREAM)]  # type: ignore[call-overload]
    assert [c.model_dump() for c in again] == [c.model_dump() for c in live]
    assert "".join(c.choices[0].delta.content or "" for c in again if c.choices) == (
        "Hello from upstream"
    )
    assert len(upstream_calls(upstream)) == 1
    # On the wire: chunked, one SSE event per chunk, as a live stream, with its headers.
    head, chunks = await raw_stream(sidecar)
    assert b"x-sidecar-cache: hit" in head
    assert b"Transfer-Encoding: chunked" in head and b"X-Accel-Buffering: no" in head
    events = chat_chunks("m-2024-08-06", ["Hello", " from", " upstream"])
    assert len(chunks) == len(events)
    assert all(
        c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"\n\n") == 1 for c in chunks
    )
    assert chunks[-1] == b"data: [DONE]\n\n"


async def raw_stream(sidecar: Sidecar) -> tuple[bytes, list[bytes]]:
    """The reply's head and its chunks as framed on the wire (HTTP/1.1 chunked)."""
    body = orjson.dumps(STREAM)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.running.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (KEY_A.encode(), len(body), body)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            break
        chunks.append(data[:-2])
    writer.close()
    return head, chunks


async def test_cut_streams_and_errors_are_not_kept(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    events = chat_chunks("m", ["one", "two"])

    async def fails(request: web.Request, got: Received) -> web.StreamResponse:
        return web.json_response({"error": {"message": "bad", "type": "invalid"}}, status=400)

    sidecar = await make_sidecar(table(upstream))
    upstream.scripts["/v1/chat/completions"] = dies_after(events[0])
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            with pytest.raises(aiohttp.ClientPayloadError):
                await post(http, sidecar, STREAM)
        assert len(upstream_calls(upstream)) == 2  # the cut one was not kept
        upstream.scripts["/v1/chat/completions"] = fails
        assert [(await post(http, sidecar, CHAT))[:2] for _ in range(2)] == [(400, "miss")] * 2
        assert len(upstream_calls(upstream)) == 4
        del upstream.scripts["/v1/chat/completions"]
        assert (await post(http, sidecar, CHAT))[:2] == (200, "miss")
        assert (await post(http, sidecar, CHAT))[:2] == (200, "hit")


async def test_each_per_request_control(make_sidecar: MakeSidecar, upstream: FakeUpstream) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with aiohttp.ClientSession() as http:

        async def ask(body: dict[str, object], **headers: str) -> str | None:
            status, cache, _ = await post(http, sidecar, body, **headers)
            assert status == 200
            return cache

        assert await ask({**CHAT, "cache": {"no-store": True}}) == "miss"
        assert await ask(CHAT) == "miss"  # nothing was kept
        assert await ask(CHAT) == "hit"
        assert await ask({**CHAT, "cache": {"no-cache": True}}) == "miss"  # fetched again
        assert await ask(CHAT, **{"Cache-Control": "no-cache"}) == "miss"
        assert await ask(CHAT, **{"Cache-Control": "no-store, no-cache"}) == "bypass"
        assert await ask({**CHAT, "cache": {"s-maxage": 600}}) == "hit"
        await asyncio.sleep(0.3)
        assert await ask({**CHAT, "cache": {"s-maxage": 0.2}}) == "miss"  # too old for it
        short = {**CHAT, "messages": [{"role": "user", "content": "brief"}]}
        assert await ask({**short, "cache": {"ttl": 1.0}}) == "miss"
        assert await ask(short) == "hit"  # the `cache` field is not part of the key
        await asyncio.sleep(1.1)
        assert await ask(short) == "miss"  # its own ttl ran out
        status, _, body = await post(http, sidecar, {**CHAT, "cache": "yes"})
        assert status == 400 and orjson.loads(body)["error"]["param"] == "cache"
    assert all("cache" not in r.json() for r in upstream.received)  # never sent upstream


async def test_ttl_mode_default_off_and_call_types(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    text = table(
        upstream,
        "    ttl: 1.0\n    mode: default_off\n    supported_call_types: [acompletion]",
    )
    sidecar = await make_sidecar(text)
    use = {**CHAT, "cache": {"use-cache": True}}
    async with aiohttp.ClientSession() as http:
        assert (await post(http, sidecar, CHAT))[1] == "bypass"
        assert (await post(http, sidecar, use))[1] == "miss"
        assert (await post(http, sidecar, use))[1] == "hit"
        assert (await post(http, sidecar, CHAT))[1] == "bypass"  # not asked: not used
        await asyncio.sleep(1.1)
        assert (await post(http, sidecar, use))[1] == "miss"  # the ttl ran out
        embed = {"model": "m", "input": "x", "cache": {"use-cache": True}}
        assert (await post(http, sidecar, embed, "/v1/embeddings"))[1] == "bypass"


async def test_one_key_is_never_answered_from_anothers_entries(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with aiohttp.ClientSession() as http:
        assert (await post(http, sidecar, CHAT, key=KEY_A))[1] == "miss"
        assert (await post(http, sidecar, CHAT, key=KEY_B))[1] == "miss"
        assert (await post(http, sidecar, CHAT, key=KEY_A))[1] == "hit"
        assert (await post(http, sidecar, CHAT, key=KEY_B))[1] == "hit"
    assert len(upstream_calls(upstream)) == 2


async def test_a_hit_counts_toward_rpm_but_not_tpm(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    # Each reply reports 8 tokens. rpm 4: the hits count as requests. tpm 5: the miss spends
    # the key's tokens and more, yet hits, which spend none, go on being served.
    sidecar = await make_sidecar(table(upstream, keys="rpm: 4\n      tpm: 5"))
    other = {**CHAT, "messages": [{"role": "user", "content": "not cached"}]}
    async with aiohttp.ClientSession() as http:
        got = [(await post(http, sidecar, CHAT))[:2] for _ in range(3)]
        status, _, body = await post(http, sidecar, other)
        got.append((await post(http, sidecar, CHAT))[:2])
        got.append((await post(http, sidecar, CHAT))[:2])
    assert got == [(200, "miss"), (200, "hit"), (200, "hit"), (200, "hit"), (429, None)]
    assert status == 429 and b"tokens-per-minute" in body  # a miss would spend tokens
    assert len(upstream_calls(upstream)) == 1


async def test_the_memory_bound_evicts_least_recently_used(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(table(upstream, "    max_bytes: 8192"))
    cache = sidecar.running.gateway.cache
    assert cache is not None
    store = cache.store
    assert isinstance(store, LocalStore)
    async with aiohttp.ClientSession() as http:
        bodies = [{**CHAT, "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(40)]
        for body in bodies:
            assert (await post(http, sidecar, body))[1] == "miss"
            await asyncio.sleep(0)  # let the background store run
        assert store.bytes <= 8192
        assert 0 < len(store) < 40
        assert (await post(http, sidecar, bodies[-1]))[1] == "hit"  # the newest stayed
        assert (await post(http, sidecar, bodies[0]))[1] == "miss"  # the oldest went
        async with http.get(sidecar.url + "/metrics") as r:
            text = await r.text()
    assert 'sidecar_cache_requests_total{model="m",result="hit"} 1' in text


async def test_type_redis_is_shared_by_two_sidecar_processes(
    upstream: FakeUpstream, redis: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        table(
            upstream,
            f"    type: redis\n    host: 127.0.0.1\n    port: {redis.port}\n    namespace: t",
        )
    )
    checked = describe(configs.load(path, {}))
    assert f"response cache: on redis://127.0.0.1:{redis.port}/0, namespace t, ttl 600 s" in checked
    procs = [start(path), start(path)]
    try:
        for _, port in procs:
            await wait_ready(port)
        async with aiohttp.ClientSession() as http:
            results = []
            for _, port in procs:
                async with http.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json=STREAM,
                    headers={"Authorization": f"Bearer {KEY_A}"},
                ) as r:
                    results.append((r.headers["x-sidecar-cache"], await r.read()))
                await asyncio.sleep(0.5)  # the first one's entry is stored in the background
        assert [r[0] for r in results] == ["miss", "hit"]
        assert results[0][1] == results[1][1]
        assert len(upstream_calls(upstream)) == 1
    finally:
        for proc, _ in procs:
            code, _, err = stop(proc)
            assert code == 0, err


async def test_a_redis_that_is_down_makes_the_cache_miss(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens: refused at once
    sidecar = await make_sidecar(
        table(upstream, f"    type: redis\n    host: 127.0.0.1\n    port: {port}")
    )
    async with aiohttp.ClientSession() as http:
        got = [(await post(http, sidecar, CHAT))[:2] for _ in range(3)]
    assert got == [(200, "miss")] * 3
    assert len(upstream_calls(upstream)) == 3


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_rss_stays_within_the_bound(upstream: FakeUpstream, tmp_path: Path) -> None:
    # 25 MB of distinct replies through a cache of 2 MiB: the process grows by about the
    # bound, not by what went through it.
    path = tmp_path / "t.yaml"
    # No access log: nobody reads this process's stdout, whose pipe would fill up.
    text = table(upstream, "    max_bytes: 2097152").replace(
        "sidecar_settings:\n", "sidecar_settings:\n  access_log: false\n"
    )
    path.write_text(text)
    proc, port = start(path)
    try:
        await wait_ready(port)
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        headers = {"Authorization": f"Bearer {KEY_A}"}
        async with aiohttp.ClientSession() as http:

            async def send(first: int, count: int) -> None:
                for i in range(first, first + count):
                    body = {"model": "m", "input": [f"text {i} {j}" for j in range(40)]}
                    async with http.post(url, json=body, headers=headers) as r:
                        assert r.status == 200
                        assert len(await r.read()) > 2500

            await send(0, 500)  # warm: what any process allocates once
            before = rss_kib(proc.pid)
            await asyncio.gather(*(send(1000 + k * 2500, 2500) for k in range(4)))
            grown = rss_kib(proc.pid) - before
        assert grown < 8 * 1024, f"RSS grew by {grown} KiB through a 2 MiB cache"
    finally:
        code, _, err = stop(proc)
        assert code == 0, err


async def test_compressed_replies_are_never_kept_for_another_client(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with aiohttp.ClientSession() as http:
        status, cache, body = await post(http, sidecar, CHAT, **{"Accept-Encoding": "gzip"})
        assert (status, cache) == (200, "miss")
        assert upstream.last.headers["Accept-Encoding"] == "identity"  # asked plain, kept plain
        async with http.post(
            sidecar.url + "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {KEY_A}", "Accept-Encoding": "identity"},
        ) as r:
            assert r.headers["x-sidecar-cache"] == "hit"
            assert "Content-Encoding" not in r.headers
            assert await r.read() == body

    async def gzips_anyway(request: web.Request, got: Received) -> web.StreamResponse:
        data = gzip.compress(orjson.dumps({"id": "x", "object": "chat.completion", "choices": []}))
        return web.Response(
            body=data, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    upstream.scripts["/v1/chat/completions"] = gzips_anyway
    other = {**CHAT, "messages": [{"role": "user", "content": "zipped"}]}
    async with aiohttp.ClientSession() as http:
        assert (await post(http, sidecar, other))[:2] == (200, "miss")
        assert (await post(http, sidecar, other))[:2] == (200, "miss")  # never kept
    assert len(upstream_calls(upstream)) == 3


async def test_a_frozen_redis_makes_the_cache_miss_without_holding_requests(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    sidecar = await make_sidecar(
        table(upstream, f"    type: redis\n    host: 127.0.0.1\n    port: {redis.port}")
    )
    async with aiohttp.ClientSession() as http:
        assert (await post(http, sidecar, CHAT))[:2] == (200, "miss")
        await asyncio.sleep(0.1)  # kept in the background
        assert (await post(http, sidecar, CHAT))[:2] == (200, "hit")
        redis.freeze()
        try:
            started = asyncio.get_running_loop().time()
            got = [(await post(http, sidecar, CHAT))[:2] for _ in range(20)]
            took = asyncio.get_running_loop().time() - started
        finally:
            redis.thaw()
    assert got == [(200, "miss")] * 20  # answered by the upstream, every one
    assert took < 5.0  # a hang guard, not a measurement: no request waits for Redis
    assert len(upstream_calls(upstream)) == 21


async def test_a_reply_whose_end_cannot_be_told_from_a_cut_is_never_kept(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    # Neither Content-Length nor chunked: the body ends with the connection, cut or not.
    events = chat_chunks("m", ["one", "two"])
    for content_type, body, request in (
        ("text/event-stream", events[0] + events[1][:10], STREAM),  # died mid-event
        ("application/json", b'{"id":"x","object":"chat.completion","choi', CHAT),  # truncated
        ("application/json", orjson.dumps({"id": "x", "choices": []}), CHAT),  # whole, even
    ):
        raw = await RawUpstream(
            reply=b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nConnection: close\r\n\r\n%s"
            % (content_type.encode(), body)
        ).start()
        try:
            sidecar = await make_sidecar(table(upstream).replace(upstream.base, raw.base))
            async with aiohttp.ClientSession() as http:
                for _ in range(2):
                    with contextlib.suppress(aiohttp.ClientPayloadError):
                        assert (await post(http, sidecar, request))[1] == "miss"
            assert raw.requests == 2
        finally:
            await raw.stop()


async def test_a_stream_that_reports_an_error_or_lacks_its_end_is_not_kept(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    streams = [
        [b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'],
        chat_chunks("m", ["no", "done"])[:-1],  # ended cleanly, but without [DONE]
    ]

    async def script(request: web.Request, got: Received) -> web.StreamResponse:
        return await sse(request, streams[0])

    upstream.scripts["/v1/chat/completions"] = script
    sidecar = await make_sidecar(table(upstream))
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            assert [(await post(http, sidecar, STREAM))[1] for _ in range(2)] == ["miss"] * 2
            streams.pop(0)
    assert len(upstream_calls(upstream)) == 4


async def test_controls_are_checked_whenever_the_cache_is_on(
    make_sidecar: MakeSidecar, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(table(upstream, "    supported_call_types: [aembedding]"))
    async with aiohttp.ClientSession() as http:
        for controls in ("yes", {"ttl": 1e20}, {"s-maxage": -1}, {"no-store": "true"}):
            status, _, body = await post(http, sidecar, {**CHAT, "cache": controls})
            assert status == 400, controls
            assert orjson.loads(body)["error"]["code"] == "invalid_cache_control"


async def test_a_name_given_to_a_new_key_does_not_inherit_the_old_ones_entries(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, tmp_path: Path
) -> None:
    text = table(upstream)
    sidecar = await make_sidecar(text)
    async with aiohttp.ClientSession() as http:
        assert (await post(http, sidecar, CHAT))[1] == "miss"
        path = tmp_path / "rekeyed.yaml"
        path.write_text(text.replace(KEY_A, "sk-new-holder-of-a"))  # key 'a', a new secret
        sidecar.running.gateway.reload(configs.load(path, {}))
        assert (await post(http, sidecar, CHAT, key="sk-new-holder-of-a"))[1] == "miss"


async def test_a_herd_of_lookups_on_a_healthy_redis_all_hit(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    sidecar = await make_sidecar(
        table(upstream, f"    type: redis\n    host: 127.0.0.1\n    port: {redis.port}")
    )
    body = {"model": "m", "input": [f"a longer text, number {i}" for i in range(3000)]}
    async with aiohttp.ClientSession() as http:
        first = await post(http, sidecar, body, "/v1/embeddings")
        assert first[1] == "miss" and len(first[2]) > 200_000
        for _ in range(100):  # kept in the background: wait for it, not for a guessed time
            if (await post(http, sidecar, body, "/v1/embeddings"))[1] == "hit":
                break
            await asyncio.sleep(0.05)
        before = len(upstream_calls(upstream, "/embeddings"))
        got = await asyncio.gather(
            *(post(http, sidecar, body, "/v1/embeddings") for _ in range(50))
        )
    assert [g[1] for g in got] == ["hit"] * 50
    assert all(g[2] == first[2] for g in got)
    assert len(upstream_calls(upstream, "/embeddings")) == before
