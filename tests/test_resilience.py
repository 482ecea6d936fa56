"""Load balancing, retries, fallbacks and cooldowns, against fake upstreams that misbehave on cue."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream, HangUp, Received, chat, chat_chunks, fails_first, free_port

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
LIMIT = 10.0  # seconds any single wait may take before the test fails


class Faulty:
    """A fake upstream whose chat replies follow `mode`, switchable while requests run."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.mode = "ok"
        self.delay = 0.0
        upstream.scripts["/v1/chat/completions"] = self.reply

    async def reply(self, request: web.Request, got: Received) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        mode = self.mode
        if mode in ("500", "503"):
            return web.json_response({"error": {"message": "down"}}, status=int(mode))
        if mode == "429":
            return web.json_response({"error": {"message": "slow down"}}, status=429)
        if mode == "429-long":
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "30"}
            )
        if mode == "stall":
            await asyncio.sleep(LIMIT)
        if mode == "hangup":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if mode == "die-mid-stream":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(chat_chunks("m", ["one"])[0])
            assert request.transport is not None
            request.transport.close()
            return response
        return await chat(request, got)

    @property
    def count(self) -> int:
        return len(self.upstream.received)


@pytest.fixture
async def faulty() -> AsyncIterator[Callable[[], Awaitable[Faulty]]]:
    started: list[FakeUpstream] = []

    async def make() -> Faulty:
        upstream = await FakeUpstream().start()
        started.append(upstream)
        return Faulty(upstream)

    yield make
    for upstream in started:
        await upstream.stop()


def entry(name: str, base: str, deployment_id: str, extra: str = "") -> str:
    return (
        f"  - model_name: {name}\n    litellm_params:\n      model: hosted_vllm/{deployment_id}\n"
        f"      api_base: {base}\n{extra}    model_info: {{id: {deployment_id}}}\n"
    )


def dead_base() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


async def send(
    http: aiohttp.ClientSession, url: str, body: dict[str, object] = CHAT
) -> tuple[int, str, str]:
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        await r.read()
        return (
            r.status,
            r.headers.get("x-sidecar-deployment", ""),
            r.headers.get("x-sidecar-attempts", ""),
        )


async def test_weighted_shuffle(make_sidecar: MakeSidecar, http: aiohttp.ClientSession) -> None:
    mock = "      mock_response: hi\n      weight: {}\n"
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", "http://unused/v1", "light", mock.format(1))
        + entry("m", "http://unused/v1", "heavy", mock.format(3))
    )
    served = Counter([(await send(http, sidecar.url))[1] for _ in range(400)])
    assert served["light"] + served["heavy"] == 400
    assert 0.15 < served["light"] / 400 < 0.35  # expected 0.25


async def test_rpm_is_the_weight_without_one(
    make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    mock = "      mock_response: hi\n      rpm: {}\n"
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", "http://unused/v1", "small", mock.format(100))
        + entry("m", "http://unused/v1", "big", mock.format(900))
    )
    served = Counter([(await send(http, sidecar.url))[1] for _ in range(400)])
    assert 0.03 < served["small"] / 400 < 0.2  # expected 0.1


async def test_least_busy_spreads_what_is_in_flight(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    a, b = await faulty(), await faulty()
    a.delay = b.delay = 0.5
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", a.upstream.base, "a")
        + entry("m", b.upstream.base, "b")
        + "router_settings:\n  routing_strategy: least-busy\n"
    )
    tasks = []
    for k in range(1, 11):
        tasks.append(asyncio.ensure_future(send(http, sidecar.url)))
        # The next one comes once this one reached its upstream, while all are still in flight.
        while a.count + b.count < k:
            await asyncio.sleep(0.005)
    results = await asyncio.gather(*tasks)
    assert {r[0] for r in results} == {200}
    assert (a.count, b.count) == (5, 5)


async def test_latency_based_prefers_the_fast_one(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    slow, fast = await faulty(), await faulty()
    slow.delay = 0.1
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", slow.upstream.base, "slow")
        + entry("m", fast.upstream.base, "fast")
        + "router_settings:\n  routing_strategy: latency-based-routing\n"
    )
    for _ in range(40):
        assert (await send(http, sidecar.url))[0] == 200
    assert fast.count >= 30  # the rest: the first measurement and exploration


@pytest.mark.parametrize("mode", ["500", "503", "429", "hangup", "stall"])
async def test_retries_hide_a_failing_deployment(
    mode: str,
    faulty: Callable[[], Awaitable[Faulty]],
    make_sidecar: MakeSidecar,
    http: aiohttp.ClientSession,
) -> None:
    bad, good = await faulty(), await faulty()
    bad.mode = mode
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", bad.upstream.base, "bad", "      timeout: 0.3\n")
        + entry("m", good.upstream.base, "good")
        + "router_settings:\n  allowed_fails: 1000\n"
    )
    results = [await send(http, sidecar.url) for _ in range(12)]
    assert {r[0] for r in results} == {200}
    assert {r[1] for r in results} == {"good"}
    assert good.count == 12
    assert bad.count >= 1  # it was tried, and its failures were hidden
    assert any(r[2] == "2" for r in results)


async def test_refused_connections_are_retried(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    good = await faulty()
    sidecar = await make_sidecar(
        "model_list:\n" + entry("m", dead_base(), "dead") + entry("m", good.upstream.base, "good")
    )
    results = [await send(http, sidecar.url) for _ in range(20)]
    assert {r[0] for r in results} == {200} and good.count == 20


async def test_a_lone_deployment_is_asked_again(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    only = await faulty()
    only.upstream.scripts["/v1/chat/completions"] = fails_first(1, chat)
    sidecar = await make_sidecar("model_list:\n" + entry("m", only.upstream.base, "only"))
    assert await send(http, sidecar.url) == (200, "only", "2")


async def test_no_retry_once_the_reply_began(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    dying, spare = await faulty(), await faulty()
    dying.mode = spare.mode = "die-mid-stream"
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", dying.upstream.base, "a")
        + entry("m", spare.upstream.base, "b")
    )
    async with http.post(sidecar.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(r.read(), LIMIT)
    assert dying.count + spare.count == 1  # one call: the cut stream was not tried again


async def test_long_retry_after_is_passed_on_not_waited_for(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    only = await faulty()
    only.mode = "429-long"
    sidecar = await make_sidecar("model_list:\n" + entry("m", only.upstream.base, "only"))
    started = time.monotonic()
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "30"
        assert (await r.json())["error"]["message"] == "slow down"
    assert time.monotonic() - started < 2.0
    assert only.count == 1


async def test_fallback_group_with_its_own_model(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    primary, backup = await faulty(), await faulty()
    primary.mode = "500"
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", primary.upstream.base, "primary-model")
        + entry("backup", backup.upstream.base, "backup-model")
        + "router_settings:\n  num_retries: 1\n  fallbacks: [{m: [backup]}]\n"
    )
    status, deployment, attempts = await send(http, sidecar.url)
    assert (status, deployment, attempts) == (200, "backup-model", "3")
    assert primary.count == 2  # its own attempts first
    assert backup.upstream.last.json()["model"] == "backup-model"
    async with http.get(sidecar.url + "/metrics") as r:
        text = await r.text()
    assert 'sidecar_fallbacks_total{model="m",to="backup"} 1' in text
    assert 'sidecar_retries_total{model="m"} 1' in text


async def test_default_fallbacks(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    backup = await faulty()
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", dead_base(), "gone")
        + entry("backup", backup.upstream.base, "b")
        + "router_settings:\n  num_retries: 0\n  default_fallbacks: [backup]\n"
    )
    assert (await send(http, sidecar.url))[:2] == (200, "b")


async def test_cooldown_then_recovery(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    a, b = await faulty(), await faulty()
    a.mode = b.mode = "500"
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", a.upstream.base, "a")
        + entry("m", b.upstream.base, "b")
        + "router_settings:\n  allowed_fails: 1\n  cooldown_time: 1\n  num_retries: 1\n"
    )
    for _ in range(3):
        await send(http, sidecar.url)
    calls = a.count + b.count
    started = time.monotonic()
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "deployments_cooling_down"
    assert time.monotonic() - started < 0.5  # fast: no upstream was asked
    assert a.count + b.count == calls
    a.mode = b.mode = "ok"
    await asyncio.sleep(1.1)
    assert (await send(http, sidecar.url))[0] == 200  # out of cooldown
    async with http.get(sidecar.url + "/metrics") as r:
        assert 'sidecar_cooldowns_total{deployment="a"}' in await r.text()


async def test_rate_limited_group_answers_429(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    a, b = await faulty(), await faulty()
    a.mode = b.mode = "429"
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", a.upstream.base, "a")
        + entry("m", b.upstream.base, "b")
        + "router_settings:\n  allowed_fails: 0\n  cooldown_time: 30\n  num_retries: 1\n"
    )
    await send(http, sidecar.url)
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 429
        assert 25 <= int(r.headers["Retry-After"]) <= 30


async def test_rpm_limits_with_pre_call_checks(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    small, big = await faulty(), await faulty()
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", small.upstream.base, "small", "      rpm: 2\n")
        + entry("m", big.upstream.base, "big", "      rpm: 5\n")
        + "router_settings:\n  enable_pre_call_checks: true\n"
    )
    results = [await send(http, sidecar.url) for _ in range(8)]
    assert [r[0] for r in results] == [200] * 7 + [429]
    assert (small.count, big.count) == (2, 5)


async def test_faults_during_steady_traffic_cost_no_request(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    ups = [await faulty() for _ in range(3)]
    sidecar = await make_sidecar(
        "model_list:\n"
        + "".join(
            entry("m", u.upstream.base, f"d{i}", "      timeout: 0.5\n") for i, u in enumerate(ups)
        )
        + "router_settings:\n  allowed_fails: 2\n  cooldown_time: 0.5\n"
    )
    faults = ["500", "hangup", "stall", "429", "503", "ok"]
    statuses: Counter[int] = Counter()
    for i in range(60):
        # d0 stays healthy; d1 and d2 go through every fault, in turn and together.
        ups[1].mode = faults[i % len(faults)]
        ups[2].mode = faults[(i // 2) % len(faults)]
        tasks = [send(http, sidecar.url) for _ in range(3)]
        statuses.update(status for status, _, _ in await asyncio.gather(*tasks))
    assert statuses == {200: 180}


@pytest.mark.parametrize("stream", [False, True])
async def test_hang_ups_before_the_reply_cost_no_request(
    stream: bool,
    faulty: Callable[[], Awaitable[Faulty]],
    make_sidecar: MakeSidecar,
    http: aiohttp.ClientSession,
) -> None:
    """Half of a group reads each request and hangs up (a FIN, a reset) before any byte of a
    reply; under a steady load every request is retried onto the healthy half."""
    good = [await faulty() for _ in range(2)]
    bad = [await HangUp().start(), await HangUp(reset=True).start()]
    try:
        sidecar = await make_sidecar(
            "model_list:\n"
            + "".join(entry("m", g.upstream.base, f"good{i}") for i, g in enumerate(good))
            + "".join(entry("m", b.base, f"bad{i}") for i, b in enumerate(bad))
            # Never cooled down: every request may meet a hang-up and must still be served.
            + "router_settings:\n  num_retries: 2\n  allowed_fails: 1000000\n"
        )
        statuses: Counter[int] = Counter()
        attempts: Counter[str] = Counter()
        body = {**CHAT, "stream": stream}
        for _ in range(8):
            batch = await asyncio.gather(*(send(http, sidecar.url, body) for _ in range(50)))
            statuses.update(status for status, _, _ in batch)
            attempts.update(tried for _, _, tried in batch)
    finally:
        for b in bad:
            await b.stop()
    assert statuses == {200: 400}
    assert sum(g.count for g in good) == 400  # each request reached a healthy upstream once
    hung_up = sum(len(b.received) for b in bad)
    assert all(b.received for b in bad)
    assert {line for b in bad for line in b.received} == {b"POST /v1/chat/completions HTTP/1.1"}
    # Each hang-up cost one attempt, counted in x-sidecar-attempts.
    assert sum(int(n) - 1 for n in attempts.elements()) == hung_up
    assert set(attempts) <= {"1", "2", "3"}


async def test_in_flight_count_survives_clients_that_leave(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar
) -> None:
    slow = await faulty()
    slow.delay = 5
    sidecar = await make_sidecar("model_list:\n" + entry("m", slow.upstream.base, "slow"))
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(
            session.post(sidecar.url + "/v1/chat/completions", json=CHAT)
        )
        while slow.count < 1:
            await asyncio.sleep(0.01)
        pending.cancel()  # the client leaves before the upstream answers
        with pytest.raises(asyncio.CancelledError):
            await pending
    router = sidecar.running.gateway.router
    for _ in range(100):
        if router.of(router_deployment(sidecar, "slow")).in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert router.of(router_deployment(sidecar, "slow")).in_flight == 0


def router_deployment(sidecar: object, deployment_id: str) -> Any:
    gateway = sidecar.running.gateway  # type: ignore[attr-defined]
    return next(d for d in gateway.state.config.deployments if d.id == deployment_id)


async def test_an_exhausted_group_answers_with_one_of_each_header(
    faulty: Callable[[], Awaitable[Faulty]], make_sidecar: MakeSidecar, http: aiohttp.ClientSession
) -> None:
    """The last upstream error is relayed with our headers set once, not added beside its own."""
    a, b = await faulty(), await faulty()
    a.mode = b.mode = "503"
    sidecar = await make_sidecar(
        "model_list:\n"
        + entry("m", a.upstream.base, "a")
        + entry("m", b.upstream.base, "b")
        + "router_settings:\n  allowed_fails: 1000\n"
    )
    async with http.post(sidecar.url + "/v1/chat/completions", json=CHAT) as r:
        assert r.status == 503
        assert r.headers.getall("x-sidecar-attempts") == ["3"]
        assert len(r.headers.getall("x-sidecar-deployment")) == 1
        assert r.headers.getall("Content-Type") == ["application/json; charset=utf-8"]
        assert (await r.json())["error"]["message"] == "down"
    assert a.count + b.count == 3
