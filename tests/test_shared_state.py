"""Shared state on a real redis-server: limits, cooldowns and their fallbacks across sidecars.

Two sidecars in one test stand for two replicas: each has its own sync, ledger and instance id
in Redis, exactly as two processes would (one test runs real processes with --workers 2).
Where a test needs everyone's counts to have travelled, it makes each sidecar sync once, in
turn (`settle`): a sync that returns has sent all that came before it, so nothing waits on a
clock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
import redis as redis_py
from aiohttp import web

from sidecar import config as configs
from sidecar.describe import describe
from tests.conftest import MakeSidecar, Sidecar
from tests.fakes import FakeUpstream, Received, free_port
from tests.redis_server import RedisServer
from tests.test_cli import eventually, wait_ready
from tests.test_gateway import vllm
from tests.test_ops import start, stop

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
KEY = "sk-team-key-123"
MASTER = "sk-master-key-123"
HANG_GUARD = 3.0  # seconds: a request slower than this is a hang, not a slow answer


def table(
    upstream: FakeUpstream,
    redis: RedisServer,
    *,
    key_limits: str = "rpm: 1000",
    shared: str = "sync_interval: 0.05",
    router: str = "",
    deployments: str = "",
) -> str:
    namespace = f"test-{uuid.uuid4().hex[:8]}"  # what one test counts, no other sees
    return (
        vllm(upstream, "m", "m")
        + f"""{deployments}
router_settings:
  redis_host: 127.0.0.1
  redis_port: {redis.port}
  num_retries: 0
{router}
general_settings:
  master_key: {MASTER}
sidecar_settings:
  keys:
    - name: team
      key: {KEY}
      {key_limits}
  shared_state:
    namespace: {namespace}
    {shared}
"""
    )


async def clear_of_the_minutes_turn(needed: float = 8.0) -> None:
    """Wait, when the minute of Redis's clock (this machine's) turns within `needed` seconds:
    limits count whole minutes, and a test of exact counts must not straddle two of them."""
    left = 60.0 - time.time() % 60.0
    if left < needed:
        await asyncio.sleep(left + 0.1)


async def settle(*sidecars: Sidecar) -> None:
    """Every sidecar sends what it counted, then every one reads what all have sent."""
    for _ in range(2):
        for sidecar in sidecars:
            sync = sidecar.running.gateway.sync
            assert sync is not None
            await sync.tick()


async def call(http: aiohttp.ClientSession, sidecar: Sidecar, key: str = KEY) -> int:
    started = time.monotonic()
    async with http.post(
        sidecar.url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}"},
    ) as r:
        await r.read()
        assert time.monotonic() - started < HANG_GUARD
        return r.status


def counted(redis: RedisServer, sidecar: Sidecar, counter: str) -> int:
    """Requests Redis holds for a counter ('key:team', 'deployment:*'), every minute."""
    sync = sidecar.running.gateway.sync
    assert sync is not None
    client = redis_py.Redis(port=redis.port)
    try:
        keys = client.scan_iter(f"{sync.namespace}:w:{counter}:*")
        return sum(int(client.hget(k, "r") or 0) for k in keys)
    finally:
        client.close()


def chats(upstream: FakeUpstream) -> list[Received]:
    return [r for r in upstream.received if r.path.endswith("/chat/completions")]


async def test_a_keys_rpm_is_one_budget_across_two_sidecars(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    await clear_of_the_minutes_turn()
    text = table(upstream, redis, key_limits="rpm: 5")
    one, two = await make_sidecar(text), await make_sidecar(text)
    clients = [one.openai(KEY), two.openai(KEY)]
    admitted = 0
    for i in range(5):
        reply = await clients[i % 2].chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert reply.choices[0].message.content == "Hello from upstream"
        admitted += 1
        await settle(one, two)
    for client in clients:  # either replica now refuses: the five went to both
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert refused.value.code == "rate_limit_exceeded"
        assert "requests-per-minute" in refused.value.message
        assert int(refused.value.response.headers["retry-after"]) >= 1
    assert admitted == 5
    assert len(chats(upstream)) == 5  # what was refused never reached the upstream


async def test_a_burst_overshoots_by_at_most_one_sync_interval(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    await clear_of_the_minutes_turn()
    # Both replicas take a burst of 30 each before either has synced: each admits up to the
    # limit from what it knows, so together at most 2 x rpm, never more; once synced, neither
    # admits another.
    text = table(upstream, redis, key_limits="rpm: 12", shared="sync_interval: 30")
    one, two = await make_sidecar(text), await make_sidecar(text)
    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(call(http, s) for s in [one, two] * 30))
        assert 12 <= statuses.count(200) <= 24
        assert set(statuses) == {200, 429}
        await settle(one, two)
        assert {await call(http, one), await call(http, two)} == {429}


async def test_a_keys_tpm_counts_everyones_tokens(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    await clear_of_the_minutes_turn()
    # Each reply reports 8 tokens; the estimate of each request is replaced by that count.
    text = table(upstream, redis, key_limits="tpm: 30")
    one, two = await make_sidecar(text), await make_sidecar(text)
    async with aiohttp.ClientSession() as http:
        got = []
        for i in range(6):
            got.append(await call(http, [one, two][i % 2]))
            await settle(one, two)
    assert got == [200, 200, 200, 200, 429, 429]  # 4 x 8 = 32 >= 30 after the fourth
    assert len(chats(upstream)) == 4


async def test_a_deployments_rpm_is_shared(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    await clear_of_the_minutes_turn()
    text = table(upstream, redis, router="  enable_pre_call_checks: true").replace(
        f"api_base: {upstream.base}\n", f"api_base: {upstream.base}\n      rpm: 3\n", 1
    )
    one, two = await make_sidecar(text), await make_sidecar(text)
    async with aiohttp.ClientSession() as http:
        got = []
        for i in range(5):
            got.append(await call(http, [one, two][i % 2], MASTER))
            await settle(one, two)
        async with http.post(
            two.url + "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {MASTER}"},
        ) as r:
            assert r.status == 429
            assert "rate limits" in (await r.json())["error"]["message"]
            assert int(r.headers["Retry-After"]) >= 1
    assert got == [200, 200, 200, 429, 429]
    assert len(chats(upstream)) == 3


@pytest.fixture
async def failing() -> AsyncIterator[FakeUpstream]:
    async def broken(request: web.Request, got: Received) -> web.StreamResponse:
        return web.json_response({"error": {"message": "down"}}, status=500)

    fake = await FakeUpstream().start()
    fake.scripts["/v1/chat/completions"] = broken
    yield fake
    await fake.stop()


async def test_a_cooldown_entered_by_one_sidecar_is_kept_by_the_other(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, failing: FakeUpstream, redis: RedisServer
) -> None:
    deployments = f"""  - model_name: m
    litellm_params:
      model: hosted_vllm/m
      api_base: {failing.base}
    model_info:
      id: broken"""
    router = (
        "  allowed_fails: 0\n  cooldown_time: 60\n  num_retries: 1\n  routing_strategy: least-busy"
    )
    text = table(upstream, redis, deployments=deployments, router=router).replace(
        "  num_retries: 0\n", ""
    )
    one, two = await make_sidecar(text), await make_sidecar(text)
    async with aiohttp.ClientSession() as http:
        for _ in range(20):  # until one's router has tried the broken one and set it aside
            assert await call(http, one) == 200
            if chats(failing):
                break
        assert len(chats(failing)) == 1  # allowed_fails 0: one failure cools it down
        await settle(two)  # published at once; `two` reads it at its next sync
        before, good = len(chats(failing)), len(chats(upstream))
        for _ in range(20):
            assert await call(http, two) == 200
    assert len(chats(failing)) == before  # `two` never tried it: it was cooling down
    assert len(chats(upstream)) == good + 20


async def metric(http: aiohttp.ClientSession, sidecar: Sidecar, name: str) -> str:
    async with http.get(sidecar.url + "/metrics") as r:
        text = await r.text()
    return next((line.split()[1] for line in text.splitlines() if line.startswith(name + " ")), "")


async def test_redis_killed_mid_load_then_back(
    make_sidecar: MakeSidecar,
    upstream: FakeUpstream,
    redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "sidecar")
    text = table(upstream, redis, key_limits="rpm: 100000")
    one, two = await make_sidecar(text), await make_sidecar(text)
    await settle(one, two)
    async with aiohttp.ClientSession() as http:
        assert await metric(http, one, "sidecar_redis_up") == "1"
        assert await metric(http, one, "sidecar_shared_state_instances") == "2"

        async def load(count: int) -> list[int]:
            return [await call(http, s) for _ in range(count) for s in (one, two)]

        first = asyncio.ensure_future(load(100))
        await asyncio.sleep(0.2)
        redis.stop()
        statuses = await first
        statuses += await load(20)
        assert statuses == [200] * len(statuses)  # every request answered, none waited on Redis
        await settle(one, two)
        assert await metric(http, one, "sidecar_redis_up") == "0"
        gone = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(gone) == 2, [r.getMessage() for r in caplog.records]  # once per instance
        assert "locally at 1/2" in gone[0].getMessage()

        redis.start()  # an empty Redis, on the same port: sharing resumes by itself
        await eventually(lambda: metric(http, one, "sidecar_redis_up"), "1")
        await eventually(lambda: metric(http, two, "sidecar_redis_up"), "1")
        back = [r for r in caplog.records if "shared again" in r.getMessage()]
        assert len(back) == 2
        assert float(await metric(http, one, "sidecar_shared_state_sync_age_seconds")) < 5


async def test_a_frozen_redis_never_holds_a_request(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    text = table(upstream, redis, key_limits="rpm: 100000")
    one = await make_sidecar(text)
    async with aiohttp.ClientSession() as http:
        redis.freeze()  # accepts connections, answers nothing: the socket timeouts must act
        try:
            statuses = [await call(http, one) for _ in range(30)]
            await settle(one)
            assert await metric(http, one, "sidecar_redis_up") == "0"
        finally:
            redis.thaw()
        assert statuses == [200] * 30
        await eventually(lambda: metric(http, one, "sidecar_redis_up"), "1")


async def test_redis_down_local_enforces_a_share_of_each_limit(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    await clear_of_the_minutes_turn()
    text = table(upstream, redis, key_limits="rpm: 10")
    one, two = await make_sidecar(text), await make_sidecar(text)
    await settle(one, two)
    redis.stop()
    await settle(one, two)
    async with aiohttp.ClientSession() as http:
        got = [await call(http, one) for _ in range(8)]
        master = await call(http, one, MASTER)  # no limit: not governed by shared state
    assert got == [200] * 5 + [429] * 3  # 10 / 2 live instances
    assert master == 200


async def test_redis_down_deny_refuses_only_what_a_shared_limit_governs(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    text = table(
        upstream,
        redis,
        key_limits="rpm: 10",
        shared="sync_interval: 0.05\n    on_redis_down: deny",
    )
    one = await make_sidecar(text)
    redis.stop()
    await settle(one)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            one.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            assert r.status == 503
            body = await r.json()
        assert body["error"]["code"] == "shared_state_unavailable"
        assert r.headers["Retry-After"] == "1"
        assert await call(http, one, MASTER) == 200
        redis.start()
        await eventually(lambda: call(http, one), 200)


async def test_sync_interval_zero_is_exact_under_concurrency(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    await clear_of_the_minutes_turn()
    text = table(upstream, redis, key_limits="rpm: 20", shared="sync_interval: 0")
    one, two = await make_sidecar(text), await make_sidecar(text)
    clients = [one.openai(KEY), two.openai(KEY)]

    async def attempt(client: openai.AsyncOpenAI) -> int:
        try:
            await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        except openai.RateLimitError:
            return 429
        return 200

    statuses = await asyncio.gather(*(attempt(c) for c in clients * 30))
    assert statuses.count(200) == 20
    assert statuses.count(429) == 40
    assert len(chats(upstream)) == 20


async def test_sync_interval_zero_deployment_rpm_is_exact(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    await clear_of_the_minutes_turn()
    text = table(
        upstream, redis, shared="sync_interval: 0", router="  enable_pre_call_checks: true"
    ).replace(f"api_base: {upstream.base}\n", f"api_base: {upstream.base}\n      rpm: 7\n", 1)
    one, two = await make_sidecar(text), await make_sidecar(text)
    async with aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(call(http, s, MASTER) for s in [one, two] * 15))
    assert statuses.count(200) == 7
    assert set(statuses) == {200, 429}
    assert len(chats(upstream)) == 7


async def test_scripts_run_by_eval_where_evalsha_is_refused(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, tmp_path: Path
) -> None:
    await clear_of_the_minutes_turn()
    renamed = RedisServer(tmp_path, "--rename-command", "EVALSHA", "").start()
    try:
        text = table(upstream, renamed, key_limits="rpm: 3", shared="sync_interval: 0")
        one = await make_sidecar(text)
        async with aiohttp.ClientSession() as http:
            got = [await call(http, one) for _ in range(5)]
            assert await metric(http, one, "sidecar_redis_up") == "1"
        sync = one.running.gateway.sync
        assert sync is not None and sync.link.eval_only
        assert got == [200, 200, 200, 429, 429]
    finally:
        renamed.stop()


async def test_redis_password_stays_secret(
    make_sidecar: MakeSidecar,
    upstream: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await clear_of_the_minutes_turn()
    password = "redis-Pa55word-do-not-leak"
    guarded = RedisServer(tmp_path, "--requirepass", password).start()
    caplog.set_level(logging.DEBUG, "sidecar")
    try:
        text = table(upstream, guarded, key_limits="rpm: 2").replace(
            f"  redis_port: {guarded.port}\n",
            f"  redis_port: {guarded.port}\n  redis_password: os.environ/RP\n",
        )
        path = tmp_path / "t.yaml"
        path.write_text(text)
        checked = describe(configs.load(path, {"RP": password}))
        assert "with a password" in checked and password not in checked
        assert password not in repr(configs.load(path, {"RP": password}))
        good = await make_sidecar(text, env={"RP": password})
        wrong = await make_sidecar(text, env={"RP": "not-the-" + password})
        async with aiohttp.ClientSession() as http:
            assert [await call(http, good) for _ in range(3)] == [200, 200, 429]
            assert await metric(http, good, "sidecar_redis_up") == "1"
            assert await call(http, wrong) == 200  # a refused password: served, locally
            assert await metric(http, wrong, "sidecar_redis_up") == "0"
            async with http.get(wrong.url + "/metrics") as r:
                assert password not in await r.text()
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "unreachable" in logged and password not in logged
    finally:
        guarded.stop()


async def test_workers_share_through_redis(
    upstream: FakeUpstream, redis: RedisServer, tmp_path: Path
) -> None:
    await clear_of_the_minutes_turn()
    # Real processes: --workers 2 on one port, each worker its own instance in Redis.
    path = tmp_path / "t.yaml"
    path.write_text(table(upstream, redis, key_limits="rpm: 6", shared="sync_interval: 0.02"))
    proc, port = start(path, "--workers", "2")
    try:
        await wait_ready(port)
        async with aiohttp.ClientSession() as http:

            async def instances() -> str:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    text = await r.text()
                return next(
                    line.split()[1]
                    for line in text.splitlines()
                    if line.startswith("sidecar_shared_state_instances ")
                )

            await eventually(instances, "2")
            got = []
            for _ in range(10):
                # A new connection each time: the kernel spreads them over the workers.
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        json=CHAT,
                        headers={"Authorization": f"Bearer {KEY}", "Connection": "close"},
                    ) as r,
                ):
                    got.append(r.status)
                await asyncio.sleep(0.3)  # many sync intervals: each worker sees the other's
        assert got == [200] * 6 + [429] * 4
        assert len({r.peer for r in chats(upstream)}) >= 1
    finally:
        code, _, err = stop(proc)
    assert code == 0, err


def test_shared_state_settings_and_their_errors(tmp_path: Path) -> None:
    base = "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n      mock_response: hi\n"
    path = tmp_path / "t.yaml"

    def load(text: str, env: dict[str, str] | None = None) -> configs.Config:
        path.write_text(base + text)
        return configs.load(path, env or {})

    assert load("").shared is None
    shared = load("router_settings:\n  redis_host: r.svc\n  redis_port: 6380\n").shared
    assert shared is not None
    assert (shared.host, shared.port, shared.namespace, shared.sync_interval) == (
        "r.svc",
        6380,
        "sidecar",
        0.5,
    )
    assert shared.on_redis_down == "local"
    url = load("router_settings:\n  redis_url: rediss://u:p%40ss@r.svc:7000/2\n").shared
    assert url is not None
    assert (url.host, url.port, url.db, url.tls, url.username, url.password) == (
        "r.svc",
        7000,
        2,
        True,
        "u",
        "p@ss",
    )
    assert url.target == "rediss://r.svc:7000/2"
    env = load("", {"REDIS_HOST": "e.svc", "REDIS_PORT": "6390", "REDIS_PASSWORD": "pw"}).shared
    assert env is not None and (env.host, env.port, env.password) == ("e.svc", 6390, "pw")
    assert load("", {"REDIS_PASSWORD": "pw"}).shared is None  # a password alone turns nothing on
    # As LiteLLM reads them: the table's host, the environment's port and password.
    mixed = load(
        "router_settings:\n  redis_host: t.svc\n",
        {"REDIS_PORT": "6391", "REDIS_PASSWORD": "pw", "REDIS_HOST": "e.svc"},
    ).shared
    assert mixed is not None and (mixed.host, mixed.port, mixed.password) == ("t.svc", 6391, "pw")
    ours = load(
        "router_settings:\n  redis_host: r\nsidecar_settings:\n  shared_state:\n"
        "    namespace: team-a\n    sync_interval: 0\n    on_redis_down: deny\n"
    ).shared
    assert ours is not None and (ours.namespace, ours.sync_interval, ours.on_redis_down) == (
        "team-a",
        0.0,
        "deny",
    )
    assert "redis_host" not in " ".join(load("router_settings:\n  redis_host: r\n").warnings)

    for text, where in [
        ("sidecar_settings:\n  shared_state:\n    namespace: a\n", "needs a Redis"),
        ("router_settings:\n  redis_port: 1\n", "router_settings.redis_host"),
        ("router_settings:\n  redis_host: r\n  redis_port: 99999\n", "router_settings.redis_port"),
        ("router_settings:\n  redis_url: http://r\n", "router_settings.redis_url"),
        ("router_settings:\n  redis_host: r\n  redis_port: 6379.7\n", "router_settings.redis_port"),
        ("router_settings:\n  redis_url: redis://r:0/0\n", "router_settings.redis_url"),
        (
            "router_settings:\n  redis_url: redis://r/99999999999999999999\n",
            "router_settings.redis_url",
        ),
        ("router_settings:\n  redis_host: 'r:6380'\n", "router_settings.redis_host"),
        (
            "router_settings:\n  redis_host: r\nsidecar_settings:\n  shared_state:\n    sync_interval: 0.0001\n",
            "sync_interval",
        ),
        (
            "router_settings:\n  redis_host: r\nsidecar_settings:\n  shared_state:\n    sync_interval: -1\n",
            "sync_interval",
        ),
        (
            "router_settings:\n  redis_host: r\nsidecar_settings:\n  shared_state:\n    on_redis_down: panic\n",
            "on_redis_down",
        ),
        (
            "router_settings:\n  redis_host: r\nsidecar_settings:\n  shared_state:\n    namespace: a b\n",
            "namespace",
        ),
        (
            "router_settings:\n  redis_host: r\nsidecar_settings:\n  shared_state:\n    colour: red\n",
            "unknown key",
        ),
    ]:
        with pytest.raises(configs.ConfigError) as failed:
            load(text)
        assert where in str(failed.value), str(failed.value)
    with pytest.raises(configs.ConfigError) as secret_url:
        load("router_settings:\n  redis_url: redis://:hunter2-secret@r:notaport/0\n")
    assert "hunter2" not in str(secret_url.value)


def test_without_the_redis_package_a_configured_redis_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/m\n"
        "      mock_response: hi\nrouter_settings:\n  redis_host: r\n"
    )
    code = (
        "import sys; sys.modules['redis'] = None; from sidecar.cli import main; "
        f"sys.exit(main(['--config', {str(path)!r}, '--check']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=False,
    )
    assert done.returncode != 0
    assert "pip install 'sidecar[redis]'" in done.stderr
    assert "router_settings.redis_host" in done.stderr


async def test_a_sync_that_timed_out_but_ran_is_not_counted_twice(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    one = await make_sidecar(table(upstream, redis, shared="sync_interval: 30"))
    sync = one.running.gateway.sync
    assert sync is not None
    async with aiohttp.ClientSession() as http:
        assert await call(http, one) == 200
    redis.freeze()
    try:
        await sync.tick()  # gives up after the timeout; the script waits in Redis's buffer
        assert not sync.ledger.up
    finally:
        redis.thaw()  # ... and runs now
    await sync.tick()  # the same batch again: applied once
    await sync.tick()
    assert counted(redis, one, "key:team") == 1


async def test_a_limit_a_reload_adds_is_shared(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer, tmp_path: Path
) -> None:
    await clear_of_the_minutes_turn()
    text = table(upstream, redis)
    one, two = await make_sidecar(text), await make_sidecar(text)
    async with aiohttp.ClientSession() as http:
        for sidecar in (one, two):  # served before: each router knows the deployment
            assert await call(http, sidecar, MASTER) == 200
        path = tmp_path / "reloaded.yaml"
        path.write_text(
            text.replace(
                "  num_retries: 0\n", "  num_retries: 0\n  enable_pre_call_checks: true\n"
            ).replace(
                f"api_base: {upstream.base}\n", f"api_base: {upstream.base}\n      rpm: 4\n", 1
            )
        )
        for sidecar in (one, two):
            sidecar.running.gateway.reload(configs.load(path, {}))
        got = []
        for i in range(6):
            got.append(await call(http, (one, two)[i % 2], MASTER))
            await settle(one, two)
    assert got.count(200) == 4


async def test_deny_answers_a_deployment_limit_as_it_answers_a_keys(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    text = table(
        upstream,
        redis,
        shared="sync_interval: 0.05\n    on_redis_down: deny",
        router="  enable_pre_call_checks: true",
    ).replace(f"api_base: {upstream.base}\n", f"api_base: {upstream.base}\n      rpm: 100\n", 1)
    one = await make_sidecar(text)
    redis.stop()
    await settle(one)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            one.url + "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {MASTER}"},
        ) as r,
    ):
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "shared_state_unavailable"
        assert r.headers["Retry-After"] == "1"


async def test_exact_admission_counts_only_calls_made(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    # Two dead deployments, one attempt a request: the retry budget is spent before a second
    # deployment is admitted, so Redis counts one admission per call.
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: refused
    deployments = f"""  - model_name: m
    litellm_params:
      model: hosted_vllm/m
      api_base: {dead}
      rpm: 100
    model_info:
      id: second"""
    text = table(
        upstream,
        redis,
        shared="sync_interval: 0",
        deployments=deployments,
        router="  enable_pre_call_checks: true",
    ).replace(f"api_base: {upstream.base}\n", f"api_base: {dead}\n      rpm: 100\n", 1)
    one = await make_sidecar(text)
    async with aiohttp.ClientSession() as http:
        assert [await call(http, one, MASTER) for _ in range(5)] == [502] * 5
    assert counted(redis, one, "deployment:*") == 5


async def test_a_stopping_instance_sends_its_last_counts_and_leaves(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    text = table(upstream, redis, shared="sync_interval: 30")
    one, two = await make_sidecar(text), await make_sidecar(text)
    await settle(one, two)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            assert await call(http, one) == 200
        await one.running.stop()
        assert counted(redis, two, "key:team") == 3
        await settle(two)
        assert await metric(http, two, "sidecar_shared_state_instances") == "1"


async def test_a_redis_user_limited_to_what_the_scripts_run(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, tmp_path: Path
) -> None:
    await clear_of_the_minutes_turn()
    # The README's ACL: scripting, reads, writes and TIME; no CLIENT, no EVALSHA needed.
    acl = tmp_path / "users.acl"
    acl.write_text(
        "user default off\nuser gw on >gw-pass ~* +@scripting +@read +@write +time -evalsha\n"
    )
    guarded = RedisServer(tmp_path, "--aclfile", str(acl)).start()
    try:
        text = table(upstream, guarded, key_limits="rpm: 2", shared="sync_interval: 0").replace(
            f"  redis_port: {guarded.port}\n",
            f"  redis_url: redis://gw:gw-pass@127.0.0.1:{guarded.port}/0\n",
        )
        one = await make_sidecar(text)
        async with aiohttp.ClientSession() as http:
            assert [await call(http, one) for _ in range(3)] == [200, 200, 429]
            assert await metric(http, one, "sidecar_redis_up") == "1"
    finally:
        guarded.stop()
