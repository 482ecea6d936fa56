"""Running it for real: access log, request ids, health, metrics, reload on file change, UDS,
drain with a stream in flight. Subprocesses of the real CLI where the process matters."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream, Received, chat, chat_chunks, fails_first, free_port
from tests.test_cli import eventually, models, wait_ready
from tests.test_gateway import vllm

CHAT = {"model": "mistral", "messages": [{"role": "user", "content": "hi"}]}


def start(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_access_log_lines(tmp_path: Path, upstream: FakeUpstream) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        vllm(upstream) + "      api_key: sk-upstream-SECRET\n"
        "general_settings:\n  master_key: os.environ/MK\n"
    )
    proc, port = start(config, env={"MK": "sk-master-SECRET"})
    try:
        await wait_ready(port)
        headers = {"Authorization": "Bearer sk-master-SECRET", "X-Request-Id": "req-42"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
            async with http.post(
                f"http://127.0.0.1:{port}/v1/chat/completions", json={**CHAT, "stream": True}
            ) as r:
                await r.read()
            async with http.post(
                f"http://127.0.0.1:{port}/v1/chat/completions", json={**CHAT, "model": "nope"}
            ) as r:
                assert r.status == 404
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{port}/v1/models",
                headers={"Authorization": "Bearer wrong-SECRET"},
            ) as r,
        ):
            assert r.status == 401
    finally:
        code, out, err = stop(proc)
    assert code == 0
    assert "SECRET" not in out and "SECRET" not in err
    lines = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    by_path = [(x["path"], x["status"]) for x in lines]
    assert ("/v1/chat/completions", 200) in by_path and ("/v1/models", 401) in by_path
    first = next(x for x in lines if x["path"] == "/v1/chat/completions" and not x["stream"])
    assert first["request_id"] == "req-42"
    (sent_up,) = first["upstream_request_ids"]  # what the upstream got instead: a UUID
    assert uuid.UUID(sent_up).version == 4
    assert first["model"] == "mistral"
    assert first["deployment"] == "hosted_vllm/mistralai/Mistral-7B#0"
    assert first["upstream_status"] == 200 and first["attempts"] == 1
    assert first["duration_ms"] >= first["ttfb_ms"] > 0
    assert first["bytes"] > 0 and first["method"] == "POST"
    assert "T" in first["time"]
    streamed = next(x for x in lines if x["stream"])
    assert streamed["status"] == 200 and streamed["bytes"] > 0
    missing = next(x for x in lines if x["status"] == 404)
    assert missing["model"] is None and missing["upstream_status"] is None


async def test_request_id_goes_upstream_and_back(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(
        sidecar.url + "/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "trace-7"}
    ) as r:
        assert r.headers["x-request-id"] == "trace-7"  # the client's, end to end
    assert uuid.UUID(upstream.last.headers["X-Request-Id"]).version == 4  # the upstream's own
    async with http.post(
        sidecar.url + "/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "x" * 200}
    ) as r:
        made = r.headers["x-request-id"]
    assert made != "x" * 200 and upstream.last.headers["X-Request-Id"] == made
    assert uuid.UUID(made).version == 4  # what strict upstreams (llama-cpp-python) demand
    async with http.post(sidecar.url + "/v1/chat/completions", json={**CHAT, "model": "x"}) as r:
        assert r.status == 404 and r.headers["x-request-id"]


async def test_each_attempt_sends_the_upstream_its_own_request_id(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, capfd: pytest.CaptureFixture[str]
) -> None:
    """vLLM tracks requests by X-Request-Id: a retry, or two clients that send one id, must
    never reach it with an id already in use. The log ties the client's id to each attempt's."""
    upstream.scripts["/v1/chat/completions"] = fails_first(1, chat)
    sidecar = await make_sidecar(vllm(upstream))
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(
                sidecar.url + "/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "dup-1"}
            ) as r:
                assert r.status == 200 and r.headers["x-request-id"] == "dup-1"
    sent = [got.headers["X-Request-Id"] for got in upstream.received]
    assert len(sent) == 3 and len(set(sent)) == 3 and "dup-1" not in sent
    assert all(uuid.UUID(x).version == 4 for x in sent)
    sidecar.running.gateway.access_log.flush()
    lines = [orjson.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["request_id"] for x in lines] == ["dup-1", "dup-1"]
    assert [x["upstream_request_ids"] for x in lines] == [sent[:2], sent[2:]]


async def test_upstream_set_cookie_headers_are_relayed(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    async def cookies(request: web.Request, got: Received) -> web.StreamResponse:
        response = web.json_response({"choices": []})
        response.headers.add("Set-Cookie", "route=a1; Path=/")
        response.headers.add("Set-Cookie", "aff=b2; Path=/; HttpOnly")
        return response

    upstream.scripts["/v1/chat/completions"] = cookies
    sidecar = await make_sidecar(vllm(upstream))
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.headers.getall("Set-Cookie") == ["route=a1; Path=/", "aff=b2; Path=/; HttpOnly"]


async def test_a_streamed_mock_reply_has_a_request_id(
    make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(
        "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, mock_response: hi}\n"
    )
    for stream in (True, False):
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
        async with http.post(
            sidecar.url + "/v1/chat/completions", json=body, headers={"X-Request-Id": "mine"}
        ) as r:
            assert r.status == 200 and r.headers.getall("x-request-id") == ["mine"]
            await r.read()


async def test_health_aliases(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    for path in ("/healthz", "/readyz", "/health/liveliness", "/health/readiness"):
        async with http.get(sidecar.url + path) as r:
            assert r.status == 200, path
    sidecar.running.gateway.draining = True
    async with http.get(sidecar.url + "/readyz") as r:
        assert r.status == 503
    async with http.get(sidecar.url + "/healthz") as r:
        assert r.status == 200


async def test_admin_listener_serves_health_and_metrics_only(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(
        vllm(upstream) + "general_settings:\n  master_key: sk-master\n"
        "sidecar_settings:\n  admin_port: 0\n  admin_host: 127.0.0.1\n"
    )
    admin = f"http://127.0.0.1:{sidecar.running.admin_port}"
    assert sidecar.running.admin_port not in (None, sidecar.running.port)
    for path in ("/health/liveliness", "/health/readiness", "/healthz", "/readyz", "/metrics"):
        async with http.get(admin + path) as r:  # no key: probes and scrapers have none
            assert r.status == 200, path
    auth = {"Authorization": "Bearer sk-master"}
    async with http.get(admin + "/v1/models", headers=auth) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_url"
    async with http.post(admin + "/v1/chat/completions", json=CHAT, headers=auth) as r:
        assert r.status == 404
    assert upstream.received == []
    async with http.get(sidecar.url + "/v1/models", headers=auth) as r:
        assert r.status == 200  # the API stays where it was
    # A malformed request gets our JSON 400 there too, never its bytes echoed.
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.running.admin_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer sk-CLIENT-SECRET\x01\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert b'"code":"malformed_request"' in reply and b"SECRET" not in reply
    sidecar.running.gateway.draining = True
    async with http.get(admin + "/health/readiness") as r:
        assert r.status == 503


async def test_admin_listener_is_reachable_beyond_the_apis_loopback(tmp_path: Path) -> None:
    """As in the Kubernetes sidecar pattern: the API on 127.0.0.1 for the app beside it, health
    on every address for the kubelet. 127.0.0.2 stands for the pod's own address here."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, mock_response: hi}\n"
    )
    admin_port = free_port()
    proc, port = start(config, "--admin-port", str(admin_port))
    try:
        await wait_ready(port)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.2:{admin_port}/health/readiness") as r:
                assert r.status == 200
            try:
                async with http.get(f"http://127.0.0.2:{port}/health/readiness") as r:
                    raise AssertionError(f"the API answered beyond loopback: {r.status}")
            except aiohttp.ClientConnectorError:
                pass
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert f"health and metrics also on 0.0.0.0:{admin_port}" in err


async def test_metrics_move_with_traffic_and_parse(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream))

    async def scrape() -> dict[str, float]:
        async with http.get(sidecar.url + "/metrics") as r:
            text = await r.text()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = sample.name + str(sorted(sample.labels.items()))
                values[key] = sample.value
        return values

    before = await scrape()
    for _ in range(3):
        async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
            await r.read()
    after = await scrape()
    ok = "sidecar_requests_total" + str(
        sorted(
            {
                "endpoint": "chat",
                "model": "mistral",
                "deployment": "hosted_vllm/mistralai/Mistral-7B#0",
                "status": "200",
            }.items()
        )
    )
    assert after[ok] - before.get(ok, 0) == 3
    count = "sidecar_request_duration_seconds_count" + str(
        sorted({"endpoint": "chat", "model": "mistral"}.items())
    )
    assert after[count] == 3
    ttfb = "sidecar_upstream_ttfb_seconds_count" + str(
        sorted({"deployment": "hosted_vllm/mistralai/Mistral-7B#0"}.items())
    )
    assert after[ttfb] == 3
    prompt = "sidecar_tokens_total" + str(sorted({"model": "mistral", "kind": "prompt"}.items()))
    assert after[prompt] == 15  # the fake upstream reports 5 prompt tokens a call


async def test_metrics_switched_off_are_neither_kept_nor_served(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(vllm(upstream) + "sidecar_settings:\n  metrics: false\n")
    for _ in range(2):
        async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
    async with http.get(sidecar.url + "/metrics") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "metrics_off"
    metrics = sidecar.running.gateway.metrics
    assert not metrics.requests and not metrics.tokens and not list(metrics.duration.samples())
    assert metrics.in_flight == 0  # still counted: max_in_flight admits by it


async def test_reload_when_the_file_changes_and_on_configmap_swaps(tmp_path: Path) -> None:
    # Kubernetes mounts a ConfigMap as config.yaml -> ..data/config.yaml, ..data -> a dated dir,
    # and updates it by pointing ..data at a new dir.
    entry = "  - model_name: {0}\n    litellm_params: {{model: openai/{0}, mock_response: hi}}\n"
    settings = "sidecar_settings:\n  reload_interval: 0.1\n"
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "config.yaml").write_text("model_list:\n" + entry.format("one") + settings)
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "config.yaml").symlink_to("..data/config.yaml")
    proc, port = start(tmp_path / "config.yaml")
    try:
        await wait_ready(port)
        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "config.yaml").write_text(
            "model_list:\n" + entry.format("one") + entry.format("two") + settings
        )
        (tmp_path / "..tmp").symlink_to("v2")
        os.replace(tmp_path / "..tmp", tmp_path / "..data")  # the atomic swap
        await eventually(lambda: models(port), ["one", "two"])
        (tmp_path / "v2" / "config.yaml").write_text("model_list: [\n")  # an edit gone wrong
        await asyncio.sleep(0.5)
        assert await models(port) == ["one", "two"]  # refused: the old table serves on
    finally:
        code, _, err = stop(proc)
    assert code == 0
    assert "reload refused" in err


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "sidecar.sock")
    config = Path(__file__).resolve().parent.parent / "deploy" / "config.example.yaml"
    proc, port = start(config, "--uds", path)
    try:
        await wait_ready(port)
        connector = aiohttp.UnixConnector(path=path)
        async with aiohttp.ClientSession(connector=connector) as http:
            body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post("http://sidecar/v1/chat/completions", json=body) as r:
                assert r.status == 200
                assert (await r.json())["object"] == "chat.completion"
    finally:
        code, _, _ = stop(proc)
    assert code == 0
    assert not os.path.exists(path)  # a clean stop leaves no socket file behind


async def test_unix_socket_with_workers_is_removed_on_stop(tmp_path: Path) -> None:
    path = str(tmp_path / "sidecar.sock")
    config = Path(__file__).resolve().parent.parent / "deploy" / "config.example.yaml"
    proc, port = start(config, "--uds", path, "--workers", "2")
    try:
        await wait_ready(port)
        assert os.path.exists(path)
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert not os.path.exists(path)


async def test_a_reload_that_moves_the_listener_says_it_needs_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    table = "model_list:\n  - model_name: {0}\n    litellm_params: {{model: openai/{0}, mock_response: hi}}\n"
    config.write_text(table.format("first"))
    proc, port = start(config)
    try:
        await wait_ready(port)
        config.write_text(
            table.format("second") + "sidecar_settings:\n  port: 4999\n  workers: 2\n"
        )

        async def reloaded() -> list[str]:
            return await models(port)

        await eventually(reloaded, ["second"])  # the table reloads; the port stays
    finally:
        code, _, err = stop(proc)
    assert code == 0
    assert (
        "sidecar_settings.port, sidecar_settings.workers changed; the listeners and workers keep their settings until a restart"
        in err
    )


async def test_sigterm_lets_a_stream_finish(tmp_path: Path, upstream: FakeUpstream) -> None:
    events = chat_chunks("m", [f" w{i}" for i in range(8)])

    async def slow(request: web.Request, got: Received) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    upstream.scripts["/v1/chat/completions"] = slow
    config = tmp_path / "c.yaml"
    config.write_text(vllm(upstream))
    proc, port = start(config)
    await wait_ready(port)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={**CHAT, "stream": True}
        ) as r,
    ):
        first = await r.content.readuntil(b"\n\n")
        proc.send_signal(signal.SIGTERM)  # mid-stream
        rest = await asyncio.wait_for(r.read(), 10)
    assert first + rest == b"".join(events)  # every chunk, and a clean end
    _, err_bytes = await asyncio.to_thread(proc.communicate, timeout=15)
    err = err_bytes.decode()
    assert proc.returncode == 0, err
    assert "draining" in err and "stopped" in err
