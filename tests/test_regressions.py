"""One test per bug found in review, each named for what broke."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from sidecar import config as configs
from sidecar.deployment import ConfigError
from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream, Received, chat, sse
from tests.test_gateway import vllm

CHAT = {"model": "mistral", "messages": [{"role": "user", "content": "hi"}]}


async def test_reply_over_the_flow_control_mark_is_read_whole_and_the_connection_reused(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    big = {"object": "list", "data": [{"embedding": [0.123456789] * 100_000, "index": 0}]}

    async def large(request: web.Request, got: Received) -> web.Response:
        return web.json_response(big)  # about 1.2 MB, with a Content-Length

    upstream.scripts["/v1/embeddings"] = large
    sidecar = await make_sidecar(vllm(upstream) + "      timeout: 5\n")
    started = time.monotonic()
    async with http.post(
        sidecar.url + "/v1/embeddings", json={"model": "mistral", "input": "a"}
    ) as r:
        assert r.status == 200
        assert orjson.loads(await r.read()) == big
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200  # on the same pooled connection, which must not be left paused
    assert time.monotonic() - started < 3


async def test_translated_reply_is_asked_for_uncompressed(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def gzips_when_asked(request: web.Request, got: Received) -> web.StreamResponse:
        body = orjson.dumps(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": "m",
                "choices": [{"text": "hi", "index": 0, "finish_reason": "stop"}],
            }
        )
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(
                body=gzip.compress(body),
                content_type="application/json",
                headers={"Content-Encoding": "gzip"},
            )
        return web.Response(body=body, content_type="application/json")

    upstream.scripts["/v1/completions"] = gzips_when_asked
    sidecar = await make_sidecar(
        f"model_list:\n  - model_name: t\n    litellm_params:\n      model: text-completion-openai/i\n"
        f"      api_base: {upstream.base}\n      api_key: k\n"
    )
    async with http.post(
        sidecar.url + "/v1/chat/completions",
        headers={"Accept-Encoding": "gzip"},
        json={"model": "t", "messages": [{"role": "user", "content": "hi"}]},
    ) as r:
        reply = await r.json()
    assert upstream.last.headers["Accept-Encoding"] == "identity"
    assert reply["choices"][0]["message"]["content"] == "hi"
    # Relayed replies keep the client's choice.
    async with http.post(
        sidecar.url + "/v1/completions",
        headers={"Accept-Encoding": "gzip"},
        json={"model": "t", "prompt": "hi"},
    ) as r:
        assert r.headers.get("Content-Encoding") == "gzip"
        await r.read()
    assert upstream.last.headers["Accept-Encoding"] == "gzip"


async def test_azure_wildcard_after_a_prefix_fills_only_the_matched_part(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(
        f"model_list:\n  - model_name: 'azp/*'\n    litellm_params:\n      model: 'azure/prefix-*'\n"
        f"      api_base: http://127.0.0.1:{upstream.port}\n      api_key: k\n      api_version: v\n"
    )
    await sidecar.openai().chat.completions.create(model="azp/foo", messages=CHAT["messages"])  # type: ignore[arg-type]
    assert upstream.last.path == "/openai/deployments/prefix-foo/chat/completions"
    assert upstream.last.json()["model"] == "prefix-foo"


@pytest.mark.parametrize("base", ["http://h:99999/v1", "http://[bad/v1"])
def test_api_base_yarl_rejects_is_a_config_error(base: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"model_list:\n  - model_name: m\n    litellm_params:\n      model: hosted_vllm/x\n"
        f"      api_base: '{base}'\n"
    )
    with pytest.raises(ConfigError) as caught:
        configs.load(path, environ={})
    assert caught.value.where == "model_list[0].litellm_params.api_base"


async def test_non_utf8_key_is_401_not_500(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream) + "general_settings:\n  master_key: sk-12345678\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.running.port)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 401")


@pytest.mark.parametrize("value", [b"a\rb", b"a\x00b"])
async def test_upstream_header_with_control_characters_is_502(
    value: bytes, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Bad: " + value + b"\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sidecar = await make_sidecar(
            f"model_list:\n  - model_name: mistral\n    litellm_params:\n      model: hosted_vllm/x\n"
            f"      api_base: http://127.0.0.1:{port}/v1\nrouter_settings:\n  num_retries: 0\n"
        )
        async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "upstream_unreachable"
    finally:
        server.close()


async def test_slow_client_is_not_mistaken_for_a_silent_upstream(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    events = [b"data: " + orjson.dumps({"x": "y" * 8000, "i": i}) + b"\n\n" for i in range(4000)]

    async def burst(request: web.Request, got: Received) -> web.StreamResponse:
        return await sse(request, [*events, b"data: [DONE]\n\n"])  # 32 MB, more than sockets buffer

    upstream.scripts["/v1/chat/completions"] = burst
    sidecar = await make_sidecar(vllm(upstream) + "      stream_timeout: 0.3\n")
    async with http.post(sidecar.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        await r.content.readuntil(b"\n\n")
        await asyncio.sleep(1.5)  # the client stops reading: the sidecar stops reading too
        rest = await asyncio.wait_for(r.read(), 20)
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_upstream_that_worked_then_reset_is_not_asked_again(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def works_then_resets(request: web.Request, got: Received) -> web.Response:
        await asyncio.sleep(0.6)
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    sidecar = await make_sidecar(vllm(upstream) + "router_settings:\n  num_retries: 0\n")
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200  # a first call leaves a pooled keep-alive connection
    upstream.scripts["/v1/chat/completions"] = works_then_resets
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 502
    assert len(upstream.received) == 2  # the POST that was worked on went up once


async def test_malformed_text_completion_is_passed_on_not_a_500(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def odd(request: web.Request, got: Received) -> web.Response:
        return web.json_response({"choices": [1, 2]})

    upstream.scripts["/v1/completions"] = odd
    sidecar = await make_sidecar(
        f"model_list:\n  - model_name: t\n    litellm_params:\n      model: text-completion-openai/i\n"
        f"      api_base: {upstream.base}\n      api_key: k\n"
    )
    async with http.post(
        sidecar.url + "/v1/chat/completions",
        json={"model": "t", "messages": [{"role": "user", "content": "hi"}]},
    ) as r:
        assert r.status == 200
        assert await r.json() == {"choices": [1, 2]}


async def test_chat_still_streams_after_the_fixes(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    upstream.scripts["/v1/chat/completions"] = chat
    sidecar = await make_sidecar(vllm(upstream))
    stream = await sidecar.openai().chat.completions.create(
        model="mistral", messages=CHAT["messages"], stream=True
    )  # type: ignore[arg-type]
    assert (
        "".join([c.choices[0].delta.content or "" async for c in stream]) == "Hello from upstream"
    )


async def test_unknown_fallback_group_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "model_list:\n  - model_name: g\n    litellm_params: {model: hosted_vllm/x, api_base: 'http://h/v1'}\n"
        "router_settings:\n  fallbacks: [{g: [nope]}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        configs.load(path, environ={})
    assert caught.value.where == "router_settings.fallbacks.g" and "nope" in caught.value.message


async def test_html_error_after_retries_is_openai_shaped_and_counts_attempts(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def html(request: web.Request, got: Received) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")

    upstream.scripts["/v1/chat/completions"] = html
    sidecar = await make_sidecar(
        vllm(upstream) + "router_settings:\n  num_retries: 1\n  allowed_fails: 100\n"
    )
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 502 and r.content_type == "application/json"
        assert (await r.json())["error"]["code"] == "upstream_error"
        assert r.headers["x-sidecar-attempts"] == "2"


async def test_each_deployment_s_retry_after_is_honoured(
    make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    asked: list[tuple[int, float]] = []
    ups = [await FakeUpstream().start() for _ in range(2)]
    try:
        for i, up in enumerate(ups):

            async def busy(request: web.Request, got: Received, i: int = i) -> web.Response:
                asked.append((i, time.monotonic()))
                if len(asked) >= 4:
                    return web.json_response({"ok": True})
                return web.json_response(
                    {"error": {"message": "busy"}}, status=429, headers={"Retry-After": "1"}
                )

            up.scripts["/v1/chat/completions"] = busy
        entries = "".join(
            f"  - model_name: mistral\n    litellm_params: {{model: hosted_vllm/x{i}, api_base: '{u.base}'}}\n"
            for i, u in enumerate(ups)
        )
        sidecar = await make_sidecar(
            "model_list:\n" + entries + "router_settings:\n  num_retries: 3\n  allowed_fails: 100\n"
        )
        async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
        for i in range(2):
            times = [t for who, t in asked if who == i]
            gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
            assert all(gap >= 0.95 for gap in gaps), gaps  # never before its Retry-After ended
        assert len(asked) == 4
    finally:
        for up in ups:
            await up.stop()


async def test_connect_failures_that_start_a_cooldown_still_answer_502(
    make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    from tests.fakes import free_port

    entries = "".join(
        f"  - model_name: mistral\n    litellm_params: {{model: hosted_vllm/x, api_base: 'http://127.0.0.1:{free_port()}/v1'}}\n"
        for _ in range(2)
    )
    sidecar = await make_sidecar(
        "model_list:\n" + entries + "router_settings:\n  allowed_fails: 0\n"
    )
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 502
        assert (await r.json())["error"]["code"] == "upstream_unreachable"
        assert "Retry-After" in r.headers  # and when the group takes calls again


def test_request_ids_differ_in_forked_workers() -> None:
    import os
    import warnings

    from sidecar import requestid

    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork beside threads, on 3.12+
        pid = os.fork()
    if pid == 0:
        os.write(write, requestid.make().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    os.close(write)
    assert child.rsplit("-", 1)[0] != requestid.make().rsplit("-", 1)[0]


def test_made_request_ids_are_uuids_that_strict_upstreams_accept() -> None:
    """llama-cpp-python's server answers an empty 400 to an X-Request-Id that uuid.UUID()
    cannot parse (starlette-context); the sidecar's own ids were '<hex>-<n>'."""
    import uuid

    from sidecar import requestid

    made = [requestid.make() for _ in range(1000)]
    assert len(set(made)) == 1000
    for value in made:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


async def test_unknown_paths_are_counted(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    async with http.get(sidecar.url + "/v1/nope") as r:
        assert r.status == 404 and r.headers["x-request-id"]
    async with http.get(sidecar.url + "/metrics") as r:
        assert 'endpoint="unknown",model="",deployment="",status="404"} 1' in await r.text()


def test_key_patterns_match_any_character() -> None:
    from sidecar import auth

    assert auth.patterns(["openai/*"]).fullmatch("openai/a\nb")
