"""OpenTelemetry traces: a span per model request with the GenAI attributes, received by a
real OTLP/HTTP receiver here (decoded with opentelemetry-proto), continuing the client's
traceparent and naming the sidecar's span to the upstream; a dead or frozen collector
changes nothing for the requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from sidecar.config import load
from sidecar.deployment import ConfigError
from tests.conftest import MakeSidecar, Sidecar
from tests.fakes import FakeUpstream, free_port

KEY = "sk-trace-key-1234"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CHAT = [{"role": "user", "content": "hi"}]
LIMIT = 10.0  # seconds a span may take to arrive before it counts as lost


class Collector:
    """An OTLP/HTTP receiver: what it was sent, decoded; `hold` makes it never answer."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.hold = False
        self.release = asyncio.Event()  # a held export's end, at stop
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self.receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def receive(self, request: web.Request) -> web.Response:
        if self.hold:
            await self.release.wait()
            return web.Response(status=503)
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests.append(message)
        self.headers.append(dict(request.headers))
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def spans(self) -> list[Any]:
        return [
            span
            for message in self.requests
            for resource in message.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    async def wait(self, count: int) -> list[Any]:
        deadline = time.monotonic() + LIMIT
        while len(self.spans()) < count:
            assert time.monotonic() < deadline, f"{len(self.spans())} spans of {count}"
            await asyncio.sleep(0.05)
        return self.spans()


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    running = await Collector().start()
    yield running
    await running.stop()


def table(upstream: FakeUpstream, endpoint: str, extra: str = "") -> str:
    return f"""
model_list:
  - model_name: m
    litellm_params:
      model: hosted_vllm/served
      api_base: {upstream.base}
general_settings:
  master_key: {KEY}
sidecar_settings:
  otel:
    endpoint: {endpoint}
    service_name: sidecar-test
{extra}"""


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


async def test_a_span_continues_the_clients_trace(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, collector: Collector
) -> None:
    sidecar = await make_sidecar(
        table(
            upstream,
            f"http://127.0.0.1:{collector.port}",
            "    headers: {x-collector-token: s3cret-token}",
        )
    )
    client = sidecar.openai(KEY)
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    reply = await client.chat.completions.create(
        model="m",
        messages=CHAT,
        extra_headers={"traceparent": traceparent, "tracestate": "vendor=1"},
    )
    assert reply.choices[0].message.content
    (span,) = await collector.wait(1)
    assert span.trace_id.hex() == CLIENT_TRACE
    assert span.parent_span_id.hex() == CLIENT_SPAN
    assert span.name == "chat m"
    assert span.kind == span.SPAN_KIND_SERVER
    assert span.end_time_unix_nano > span.start_time_unix_nano
    got = attributes(span)
    assert got["gen_ai.operation.name"] == "chat"
    assert got["gen_ai.provider.name"] == "vllm"
    assert got["gen_ai.request.model"] == "m"
    assert got["gen_ai.response.model"] == "served-2024-08-06"
    assert got["gen_ai.usage.input_tokens"] == 5
    assert got["gen_ai.usage.output_tokens"] == 3
    assert got["server.address"] == "127.0.0.1"
    assert got["server.port"] == upstream.port
    assert got["http.response.status_code"] == 200
    assert "error.type" not in got
    # The upstream was told the sidecar's span is its parent, in the client's trace.
    sent = upstream.last.headers["traceparent"]
    assert sent == f"00-{CLIENT_TRACE}-{span.span_id.hex()}-01"
    assert upstream.last.headers["tracestate"] == "vendor=1"
    resource = {
        kv.key: kv.value.string_value
        for kv in collector.requests[0].resource_spans[0].resource.attributes
    }
    assert resource["service.name"] == "sidecar-test"
    assert collector.headers[0]["x-collector-token"] == "s3cret-token"


async def test_streams_errors_and_new_traces(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, collector: Collector
) -> None:
    sidecar = await make_sidecar(table(upstream, f"http://127.0.0.1:{collector.port}/v1/traces"))
    client = sidecar.openai(KEY)
    stream = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
        async with http.post(
            sidecar.url + "/v1/chat/completions",
            json={"model": "unknown", "messages": CHAT},
            headers={"traceparent": "00-zzzz-not-valid"},  # ignored: a new trace begins
        ) as r:
            assert r.status == 404
        async with http.get(sidecar.url + "/health/liveliness") as r:
            assert r.status == 200  # not a model request: no span
    streamed, missing = await collector.wait(2)
    assert attributes(streamed)["gen_ai.usage.output_tokens"] == 3  # counted for the span too
    assert len(streamed.parent_span_id) == 0  # a root: no traceparent came
    assert upstream.last.headers["traceparent"].split("-")[1] == streamed.trace_id.hex()
    assert attributes(missing)["error.type"] == "404"
    assert len(missing.parent_span_id) == 0
    assert missing.trace_id != streamed.trace_id
    await asyncio.sleep(1.5)  # a batch's delay: nothing else comes
    assert len(collector.spans()) == 2


async def test_an_unsampled_parent_is_followed(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, collector: Collector
) -> None:
    sidecar = await make_sidecar(table(upstream, f"http://127.0.0.1:{collector.port}"))
    await sidecar.openai(KEY).chat.completions.create(
        model="m",
        messages=CHAT,
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"},
    )
    sent = upstream.last.headers["traceparent"]
    assert sent.startswith(f"00-{CLIENT_TRACE}-") and sent.endswith("-00")
    await asyncio.sleep(1.5)
    assert collector.spans() == []


async def test_a_sample_ratio_keeps_that_share_of_new_traces(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, collector: Collector
) -> None:
    endpoint = f"http://127.0.0.1:{collector.port}"
    sidecar = await make_sidecar(table(upstream, endpoint, "    sample_ratio: 0.25"))
    client = sidecar.openai(KEY)
    for _ in range(200):
        await client.chat.completions.create(model="m", messages=CHAT)
    sampled = [r.headers["traceparent"].endswith("-01") for r in upstream.received]
    spans = await collector.wait(sum(sampled))
    assert 10 <= len(spans) <= 100  # 50 expected, sd 6: beyond 6.5 sd is under 1e-10
    kept = {
        r.headers["traceparent"].split("-")[1]
        for r in upstream.received
        if r.headers["traceparent"].endswith("-01")
    }
    assert {s.trace_id.hex() for s in spans} == kept
    # A client's sampled trace is kept whatever the ratio.
    await client.chat.completions.create(
        model="m",
        messages=CHAT,
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
    )
    assert CLIENT_TRACE in {s.trace_id.hex() for s in await collector.wait(len(spans) + 1)}


async def metric(sidecar: Sidecar, name: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/metrics") as r:
        text = await r.text()
    return int(next(x.split()[1] for x in text.splitlines() if x.startswith(name + " ")))


async def timed_calls(sidecar: Sidecar, count: int) -> float:
    """The slowest of `count` calls, in seconds."""
    client = sidecar.openai(KEY)
    slowest = 0.0
    for _ in range(count):
        began = time.monotonic()
        await client.chat.completions.create(model="m", messages=CHAT)
        slowest = max(slowest, time.monotonic() - began)
    return slowest


async def test_a_dead_collector_slows_no_request(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(
        table(upstream, f"http://127.0.0.1:{free_port()}", "    timeout: 1\n    max_queue: 5")
    )
    assert await timed_calls(sidecar, 20) < LIMIT
    # 20 spans: at most 5 wait in the queue at once, the rest are dropped; and every batch
    # sent fails, so in the end all 20 are counted as dropped, however the waits fell.
    deadline = time.monotonic() + LIMIT
    while await metric(sidecar, "sidecar_trace_spans_dropped_total") < 20:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert await metric(sidecar, "sidecar_trace_export_failures_total") >= 1
    assert await metric(sidecar, "sidecar_trace_spans_exported_total") == 0


async def test_a_frozen_collector_holds_no_request(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, collector: Collector
) -> None:
    collector.hold = True
    sidecar = await make_sidecar(
        table(upstream, f"http://127.0.0.1:{collector.port}", "    timeout: 30\n    max_queue: 10")
    )
    await timed_calls(sidecar, 5)
    # The first batch is now stuck in the collector for the rest of the test (its export may
    # take 30 s): what comes next can only queue, 10 at most.
    await asyncio.sleep(1.5)
    assert await timed_calls(sidecar, 30) < LIMIT
    assert await metric(sidecar, "sidecar_trace_spans_dropped_total") >= 20
    # The stop is not held either: the stuck export gets 2 s, then the process goes.
    began = time.monotonic()
    await sidecar.running.stop()
    assert time.monotonic() - began < LIMIT


def test_tracing_settings_and_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    base = "model_list:\n  - model_name: m\n    litellm_params: {model: hosted_vllm/m, api_base: 'http://h:1/v1'}\n"

    def loaded(text: str, env: dict[str, str] | None = None) -> Any:
        path.write_text(base + text)
        return load(path, environ=env or {})

    assert loaded("").otel is None
    from_env = loaded("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}).otel
    assert from_env.traces_url == "http://collector:4318/v1/traces"
    whole = loaded("", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c:4318/x/v1/traces"}).otel
    assert whole.traces_url == "https://c:4318/x/v1/traces"
    named = loaded(
        "sidecar_settings:\n  otel: {endpoint: 'http://u:p@c:4318', headers: {authorization: os.environ/TOKEN}}\n",
        {"TOKEN": "Bearer tok-123456", "OTEL_SERVICE_NAME": "edge"},
    ).otel
    assert named.service_name == "edge" and named.headers == {"authorization": "Bearer tok-123456"}
    assert "tok-123456" not in repr(named) and named.target == "http://c:4318/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_SAMPLER": "traceidratio"}
    assert loaded("", {**env, "OTEL_TRACES_SAMPLER_ARG": "0.25"}).otel.sample_ratio == 0.25
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        loaded("", {**env, "OTEL_TRACES_SAMPLER_ARG": "half"})
    for text, where in [
        ("sidecar_settings:\n  otel: {endpoint: 'collector:4318'}\n", "otel.endpoint"),
        ("sidecar_settings:\n  otel: {service_name: x}\n", "otel.endpoint"),
        ("sidecar_settings:\n  otel: {endpoint: 'http://c', timeout: 0}\n", "otel.timeout"),
        ("sidecar_settings:\n  otel: {endpoint: 'http://c', max_queue: 0}\n", "otel.max_queue"),
        ("sidecar_settings:\n  otel: {endpoint: 'http://c', sampler: x}\n", "otel.sampler"),
        (
            "sidecar_settings:\n  otel: {endpoint: 'http://c', sample_ratio: 2}\n",
            "otel.sample_ratio",
        ),
    ]:
        with pytest.raises(ConfigError) as raised:
            loaded(text)
        assert where in str(raised.value)
