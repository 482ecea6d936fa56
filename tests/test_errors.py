"""Every failure is an OpenAI-shaped error with a fitting status, and nothing secret is in it."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream, Received, free_port
from tests.test_gateway import vllm

CHAT = {"model": "mistral", "messages": [{"role": "user", "content": "hi"}]}


def assert_error_shape(body: bytes) -> dict[str, object]:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'"model"', None),
        (b'{"messages": []}', "model"),
        (b'{"model": 7, "messages": []}', "model"),
        (b'{"model": "", "messages": []}', "model"),
        (b'{"model": "mistral", "messages": "hi"}', "messages"),
        (b'{"model": "mistral", "messages": [], "stream": "yes"}', "stream"),
        (b'\xff\xfe{"model"', None),
    ],
)
async def test_malformed_body_is_400(
    body: bytes,
    param: str | None,
    upstream: FakeUpstream,
    make_sidecar: MakeSidecar,
    http: aiohttp.ClientSession,
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", data=body) as r:
        assert r.status == 400
        assert r.content_type == "application/json"
        error = assert_error_shape(await r.read())
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert upstream.received == []
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 200  # and the server keeps serving


async def test_master_key(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(
        vllm(upstream) + "general_settings:\n  master_key: os.environ/SIDECAR_KEY\n",
        env={"SIDECAR_KEY": "sk-master-1234"},
    )
    for key in (None, "sk-wrong", "sk-master-12345", ""):
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
            assert r.status == 401, key
            text = await r.text()
            assert "sk-master" not in text
            assert assert_error_shape(text.encode())["code"] == "invalid_api_key"
        async with http.get(sidecar.url + "/v1/models", headers=headers) as r:
            assert r.status == 401
    assert upstream.received == []
    with pytest.raises(openai.AuthenticationError):
        await sidecar.openai("sk-wrong").chat.completions.create(**CHAT)  # type: ignore[call-overload]
    reply = await sidecar.openai("sk-master-1234").chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert reply.choices[0].message.content == "Hello from upstream"
    # The client's key stays with the sidecar; the upstream sees none of it.
    assert "Authorization" not in upstream.last.headers
    assert "sk-master" not in str(dict(upstream.last.headers))
    async with http.get(sidecar.url + "/v1/models", headers={"api-key": "sk-master-1234"}) as r:
        assert r.status == 200  # Azure-style clients send api-key
    async with http.get(sidecar.url + "/health/liveliness") as r:
        assert r.status == 200  # probes need no key


async def test_client_authorization_never_reaches_upstream(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream) + "      api_key: sk-upstream\n")
    headers = {
        "Authorization": "Bearer client-token",
        "Cookie": "session=1",
        "Proxy-Authorization": "x",
    }
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
        assert r.status == 200
    got = upstream.last.headers
    assert got["Authorization"] == "Bearer sk-upstream"
    assert "Cookie" not in got and "Proxy-Authorization" not in got


async def test_paths_with_and_without_v1(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    for prefix in ("", "/v1"):
        async with http.post(f"{sidecar.url}{prefix}/chat/completions", json=CHAT) as r:
            assert r.status == 200
        async with http.post(
            f"{sidecar.url}{prefix}/completions", json={"model": "mistral", "prompt": "a"}
        ) as r:
            assert r.status == 200
        async with http.post(
            f"{sidecar.url}{prefix}/embeddings", json={"model": "mistral", "input": "a"}
        ) as r:
            assert r.status == 200
        async with http.get(f"{sidecar.url}{prefix}/models") as r:
            assert r.status == 200
    assert [g.path for g in upstream.received] == [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    ] * 2


async def test_unknown_path_404_and_wrong_method_405(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/complete", json=CHAT) as r:
        assert r.status == 404
        assert_error_shape(await r.read())
    async with http.get(sidecar.url + "/v1/chat/completions") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"
        assert_error_shape(await r.read())
    async with http.post(sidecar.url + "/v1/models") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "GET"


async def test_upstream_error_passes_through(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    body = b'{"error":{"message":"slow down","type":"rate_limit","param":null,"code":"rl"}}'

    async def limited(request: web.Request, got: Received) -> web.Response:
        return web.Response(
            status=429,
            body=body,
            content_type="application/json",
            headers={"Retry-After": "7", "x-ratelimit-remaining-requests": "0"},
        )

    upstream.scripts["/v1/chat/completions"] = limited
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 429
        assert await r.read() == body
        assert r.headers["Retry-After"] == "7"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-sidecar-deployment"] == "hosted_vllm/mistralai/Mistral-7B#0"
    with pytest.raises(openai.RateLimitError) as caught:
        await sidecar.openai().chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert caught.value.code == "rl"


async def test_unreachable_upstream_is_502(
    make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(f"""
model_list:
  - model_name: mistral
    litellm_params:
      model: openai/mistral
      api_base: http://127.0.0.1:{free_port()}/v1
      api_key: sk-do-not-leak
""")
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 502
        text = await r.text()
    assert assert_error_shape(text.encode())["code"] == "upstream_unreachable"
    assert "sk-do-not-leak" not in text
    with pytest.raises(openai.APIStatusError) as caught:
        await sidecar.openai().chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert caught.value.status_code == 502


async def test_slow_upstream_is_504(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def stall(request: web.Request, got: Received) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    upstream.scripts["/v1/chat/completions"] = stall
    sidecar = await make_sidecar(vllm(upstream) + "      timeout: 0.3\n")
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 504
        assert assert_error_shape(await r.read())["code"] == "upstream_timeout"


async def test_upstream_that_hangs_up_is_502(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def hang_up(request: web.Request, got: Received) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    upstream.scripts["/v1/chat/completions"] = hang_up
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 502
        assert_error_shape(await r.read())


async def test_body_over_limit_is_413(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream) + "sidecar_settings:\n  max_request_bytes: 1000\n")
    big = {"model": "mistral", "messages": [{"role": "user", "content": "x" * 2000}]}
    async with http.post(sidecar.url + "/v1/chat/completions", json=big) as r:
        assert r.status == 413
        assert assert_error_shape(await r.read())["code"] == "request_too_large"

    async def chunks():  # no Content-Length: the limit holds while reading
        yield b'{"model": "mistral", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}]}'

    async with http.post(sidecar.url + "/v1/chat/completions", data=chunks()) as r:
        assert r.status == 413
    assert upstream.received == []


async def test_mock_embeddings_is_a_clear_404(
    make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(
        "model_list:\n  - model_name: demo\n    litellm_params:\n"
        "      model: openai/demo\n      mock_response: hi\n"
    )
    # A mock_response answers chat and completions only: its group serves no embeddings.
    async with http.post(sidecar.url + "/v1/embeddings", json={"model": "demo", "input": "a"}) as r:
        assert r.status == 404
        assert assert_error_shape(await r.read())["code"] == "unsupported_endpoint"


async def test_health(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    async with http.get(sidecar.url + "/health/liveliness") as r:
        assert r.status == 200
    async with http.get(sidecar.url + "/health/readiness") as r:
        assert r.status == 200
    sidecar.running.gateway.draining = True
    async with http.get(sidecar.url + "/health/readiness") as r:
        assert r.status == 503
        assert_error_shape(await r.read())


async def test_non_json_upstream_error_becomes_openai_shaped(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def html(request: web.Request, got: Received) -> web.Response:
        return web.Response(
            status=502,
            text="<html><body>\n<h1>502 Bad Gateway</h1></body></html>",
            content_type="text/html",
        )

    upstream.scripts["/v1/chat/completions"] = html
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 502
        assert r.content_type == "application/json"
        assert r.headers["x-sidecar-deployment"] == "hosted_vllm/mistralai/Mistral-7B#0"
        error = assert_error_shape(await r.read())
    assert error["code"] == "upstream_error"
    assert "502 Bad Gateway" in str(error["message"]) and "\n" not in str(error["message"])


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b"", "answered 400 Bad Request, with an empty body."),
        (b"denied: key sk-upstream-SECRET-1 is not valid", "answered 403 Forbidden: denied: key"),
    ],
)
async def test_a_non_json_error_says_its_reason_and_body_never_the_key(
    body: bytes,
    shown: str,
    upstream: FakeUpstream,
    make_sidecar: MakeSidecar,
    http: aiohttp.ClientSession,
) -> None:
    """llama.cpp's server once answered every call with an empty 400: the client must learn
    at least the status line. An upstream that quotes the key it got must not echo it."""
    status = 400 if not body else 403

    async def plain(request: web.Request, got: Received) -> web.Response:
        return web.Response(status=status, body=body, content_type="text/plain")

    upstream.scripts["/v1/chat/completions"] = plain
    sidecar = await make_sidecar(vllm(upstream) + "      api_key: sk-upstream-SECRET-1\n")
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == status
        raw = await r.read()
        error = assert_error_shape(raw)
    assert shown in str(error["message"])
    assert b"SECRET" not in raw


async def test_no_upstream_error_reply_echoes_a_key(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    """Whatever the shape of the reply, and wherever the key falls in a long one."""
    quoted = orjson.dumps({"error": {"message": "bad key sk-upstream-SECRET-1"}})
    gzipped = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    replies = [
        web.Response(status=401, body=b" " * 1178 + b"invalid key sk-upstream-SECRET-1 given"),
        web.json_response({"error": {"message": "bad key sk-upstream-SECRET-1"}}, status=401),
        web.json_response({"error": {"message": "bad x-api-key xk-extra-SECRET-2"}}, status=403),
        # Compressed, as the client's Accept-Encoding allowed: checked all the same.
        web.Response(status=401, body=gzip.compress(quoted), headers=gzipped),
        web.Response(
            status=401,
            body=zlib.compress(quoted),
            headers={**gzipped, "Content-Encoding": "deflate"},
        ),
        web.Response(
            status=401, body=b"\x00br-bytes", headers={**gzipped, "Content-Encoding": "br"}
        ),
    ]

    async def quoting(request: web.Request, got: Received) -> web.StreamResponse:
        return replies.pop(0)

    upstream.scripts["/v1/chat/completions"] = quoting
    sidecar = await make_sidecar(
        vllm(upstream)
        + "      api_key: sk-upstream-SECRET-1\n      extra_headers: {x-api-key: xk-extra-SECRET-2}\n"
        + "router_settings:\n  num_retries: 0\n"
    )
    for status in (401, 401, 403, 401, 401):
        async with http.post(
            sidecar.url + "/v1/chat/completions", json=CHAT, headers={"Accept-Encoding": "gzip"}
        ) as r:
            assert r.status == status
            raw = await r.read()
        assert b"SECRET" not in raw and b"[redacted]" in raw, raw
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 401  # a body we cannot read is not shown at all
        error = (await r.json())["error"]
    assert "encoded as 'br'" in error["message"] and error["code"] == "upstream_error"


async def test_unreachable_names_the_deployment(
    make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(
        f"model_list:\n  - model_name: m\n    litellm_params:\n      model: hosted_vllm/x\n"
        f"      api_base: http://127.0.0.1:{free_port()}/v1\n    model_info: {{id: vllm-down}}\n"
    )
    async with http.post(sidecar.url + "/v1/chat/completions", json={**CHAT, "model": "m"}) as r:
        assert r.status == 502
        assert r.headers["x-sidecar-deployment"] == "vllm-down"
        assert r.headers["x-sidecar-attempts"] == "3"  # the default: two retries
    async with http.get(sidecar.url + "/metrics") as r:
        assert (
            'sidecar_upstream_errors_total{deployment="vllm-down",kind="connect"} 3'
            in await r.text()
        )


async def test_cut_stream_counts_as_an_upstream_error(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def dies(request: web.Request, got: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        assert request.transport is not None
        request.transport.close()
        return response

    upstream.scripts["/v1/chat/completions"] = dies
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    async with http.get(sidecar.url + "/metrics") as r:
        assert 'kind="mid_reply"} 1' in await r.text()


@pytest.mark.parametrize(
    "prompt", [5, None, [], [1, "a"], [[1], "a"], [[]], True, {"text": "a"}], ids=repr
)
async def test_bad_prompt_is_400(
    prompt: object, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(
        "model_list:\n  - model_name: demo\n    litellm_params:\n"
        "      model: openai/demo\n      mock_response: hi\n"
    )
    body = {
        "model": "demo",
        "prompt": prompt,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post(sidecar.url + "/v1/completions", json=body) as r:
        assert r.status == 400
        assert assert_error_shape(await r.read())["param"] == "prompt"
    for good in ("a", ["a", "b"], [1, 2], [[1, 2], [3]]):
        async with http.post(sidecar.url + "/v1/completions", json={**body, "prompt": good}) as r:
            assert r.status == 200
            await r.read()


async def test_expect_100_continue(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar(vllm(upstream) + "sidecar_settings:\n  max_request_bytes: 1000\n")
    port = sidecar.running.port
    body = orjson.dumps(CHAT)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    assert (
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(body)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 200")
    writer.close()
    # Over the limit: 413 at once, without asking for the body.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5000\r\n\r\n"
    )
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 413")
    writer.close()


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * 9000 + b"\r\n",  # one field over 8,190 bytes
        b"".join(b"X-H%d: 1\r\n" % i for i in range(130)),  # more than 128 fields
    ],
    ids=["long-field", "many-fields"],
)
async def test_a_request_head_over_the_limits_is_431(
    extra: bytes, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.running.port)
    writer.write(b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"431", head
    assert b'"code":"request_header_fields_too_large"' in body
    # Just under the limits is fine.
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.running.port)
    under = b"".join(b"X-H%d: 1\r\n" % i for i in range(120)) + b"X-Big: " + b"a" * 8000 + b"\r\n"
    writer.write(
        b"GET /health/liveliness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + under + b"\r\n"
    )
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_retried_error_that_quotes_the_key_is_blanked_too(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    quoted = orjson.dumps({"error": {"message": "down, key sk-upstream-SECRET-1"}})

    async def down(request: web.Request, got: Received) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(status=503, body=gzip.compress(quoted), headers=headers)

    upstream.scripts["/v1/chat/completions"] = down
    sidecar = await make_sidecar(vllm(upstream) + "      api_key: sk-upstream-SECRET-1\n")
    async with http.post(
        sidecar.url + "/v1/chat/completions", json=CHAT, headers={"Accept-Encoding": "gzip"}
    ) as r:
        assert r.status == 503 and r.headers["x-sidecar-attempts"] == "3"
        raw = await r.read()
    assert b"SECRET" not in raw and b"[redacted]" in raw


async def test_only_credentials_are_blanked_whatever_their_length(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def quoting(request: web.Request, got: Received) -> web.StreamResponse:
        return web.json_response(
            {"error": {"message": "key k-SEC12", "code": 20240101}}, status=401
        )

    upstream.scripts["/v1/chat/completions"] = quoting
    sidecar = await make_sidecar(
        vllm(upstream) + "      api_key: k-SEC12\n      extra_headers: {x-project: '20240101'}\n"
    )
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        error = (await r.json())["error"]  # still JSON: a project number is no secret
    assert error == {"message": "key [redacted]", "code": 20240101}
