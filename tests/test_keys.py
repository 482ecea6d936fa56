"""Client keys: who may call, which models, how often; keys never shown."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream

CHAT = [{"role": "user", "content": "hi"}]


def table(upstream: FakeUpstream) -> str:
    return f"""
model_list:
  - model_name: chat
    litellm_params: {{model: hosted_vllm/chat, api_base: "{upstream.base}"}}
  - model_name: "openai/*"
    litellm_params: {{model: "hosted_vllm/*", api_base: "{upstream.base}"}}
  - model_name: secret-model
    litellm_params: {{model: hosted_vllm/s, api_base: "{upstream.base}"}}
general_settings:
  master_key: sk-master-0000
sidecar_settings:
  keys:
    - name: team-a
      key: os.environ/TEAM_A
      models: [chat, "openai/*"]
    - name: limited
      key: sk-limited-0000
      rpm: 2
"""


ENV = {"TEAM_A": "sk-team-a-0000"}


async def test_keys_and_their_models(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    sidecar = await make_sidecar(table(upstream), env=ENV)
    team = sidecar.openai("sk-team-a-0000")
    await team.chat.completions.create(model="chat", messages=CHAT)  # type: ignore[arg-type]
    await team.chat.completions.create(model="openai/gpt-4o", messages=CHAT)  # type: ignore[arg-type]
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await team.chat.completions.create(model="secret-model", messages=CHAT)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_allowed"
    assert [m.id for m in (await team.models.list()).data] == ["chat", "openai/*"]
    with pytest.raises(openai.NotFoundError):
        await team.models.retrieve("secret-model")  # what a key may not use, it does not see
    master = sidecar.openai("sk-master-0000")
    await master.chat.completions.create(model="secret-model", messages=CHAT)  # type: ignore[arg-type]
    assert len((await master.models.list()).data) == 3
    with pytest.raises(openai.AuthenticationError):
        await sidecar.openai("sk-team-a-0001").models.list()
    assert len(upstream.received) == 3
    for got in upstream.received:
        assert "Authorization" not in got.headers  # no client key goes upstream


async def test_key_rate_limit(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(table(upstream), env=ENV)
    headers = {"Authorization": "Bearer sk-limited-0000"}
    body = {"model": "chat", "messages": CHAT}
    statuses = []
    for _ in range(3):
        async with http.post(sidecar.url + "/v1/chat/completions", json=body, headers=headers) as r:
            statuses.append(r.status)
            if r.status == 429:
                assert 1 <= int(r.headers["Retry-After"]) <= 60
                error = (await r.json())["error"]
                assert error["code"] == "rate_limit_exceeded" and "limited" in error["message"]
    assert statuses == [200, 200, 429]
    assert len(upstream.received) == 2
    # Another key is not held back by it.
    async with http.post(
        sidecar.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-master-0000"},
    ) as r:
        assert r.status == 200
    async with http.get(sidecar.url + "/metrics") as r:
        assert "sk-" not in await r.text()


def test_check_shows_keys_only_as_fingerprints(tmp_path: object) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = Path(str(tmp_path)) / "k.yaml"
    path.write_text(table(FakeUpstream(port=1)))
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "sk-" not in done.stdout + done.stderr
    assert "key team-a: sha256:" in done.stdout and "models chat, openai/*" in done.stdout
    assert "key limited: sha256:" in done.stdout and "rpm 2" in done.stdout


async def test_slow_body_gets_408(upstream: FakeUpstream, make_sidecar: MakeSidecar) -> None:
    import asyncio

    sidecar = await make_sidecar(
        f"model_list:\n  - model_name: chat\n    litellm_params: {{model: hosted_vllm/c, api_base: '{upstream.base}'}}\n"
        "sidecar_settings:\n  body_timeout: 0.3\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.running.port)
    writer.write(
        b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"mo'
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)  # the rest never comes
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert upstream.received == []


async def test_past_max_in_flight_is_503(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    import asyncio

    from aiohttp import web

    release = asyncio.Event()

    async def held(request: web.Request, got: object) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    upstream.scripts["/v1/chat/completions"] = held
    sidecar = await make_sidecar(
        f"model_list:\n  - model_name: chat\n    litellm_params: {{model: hosted_vllm/c, api_base: '{upstream.base}'}}\n"
        "sidecar_settings:\n  max_in_flight: 2\n"
    )
    body = {"model": "chat", "messages": CHAT}
    first = [
        asyncio.ensure_future(http.post(sidecar.url + "/v1/chat/completions", json=body))
        for _ in range(2)
    ]
    while len(upstream.received) < 2:
        await asyncio.sleep(0.01)
    async with http.post(sidecar.url + "/v1/chat/completions", json=body) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "overloaded"
    release.set()
    for response in await asyncio.gather(*first):
        assert response.status == 200
        response.release()


async def test_past_max_connections_is_503(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    import asyncio

    sidecar = await make_sidecar(
        f"model_list:\n  - model_name: chat\n    litellm_params: {{model: hosted_vllm/c, api_base: '{upstream.base}'}}\n"
        "sidecar_settings:\n  max_connections: 2\n"
    )
    port = sidecar.running.port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    body = b'{"model": "chat", "messages": []}'
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    reply = await asyncio.wait_for(reader.read(), 5)  # answered, then closed
    writer.close()
    assert reply.startswith(b"HTTP/1.1 503") and b'"code":"overloaded"' in reply
    assert b"Retry-After: 1" in reply
    assert upstream.received == []
    # One that sends nothing is closed after a short grace.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    for _, w in held:
        w.close()


@pytest.mark.parametrize("path", ["/health/liveliness", "/health/readiness", "/metrics"])
async def test_health_answers_past_max_connections(
    path: str, upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """A busy pod must pass its probes: a liveness 503 would have Kubernetes restart it."""
    import asyncio

    sidecar = await make_sidecar(
        f"model_list:\n  - model_name: chat\n    litellm_params: {{model: hosted_vllm/c, api_base: '{upstream.base}'}}\n"
        "sidecar_settings:\n  max_connections: 1\n"
    )
    port = sidecar.running.port
    held = await asyncio.open_connection("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    held[1].close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
