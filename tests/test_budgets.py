"""Budgets per key: max_budget USD per budget_duration, spent by what replies cost (usage by
the deployment's prices), refused with 429 budget_exceeded until the period resets; shared on
Redis so that replicas and restarts see one sum."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import openai
import pytest
import redis as redis_py

from sidecar.deployment import ConfigError
from tests.conftest import MakeSidecar, Sidecar
from tests.fakes import FakeUpstream, Received
from tests.redis_server import RedisServer
from tests.test_cli import eventually, wait_ready
from tests.test_ops import start, stop

KEY = "sk-budget-team-key"
IN, OUT = 0.000002, 0.000010
COST = 5 * IN + 3 * OUT  # of one chat: the fake upstream's usage is 5 and 3 tokens
CHAT = [{"role": "user", "content": "hi"}]


def table(upstream: FakeUpstream, budget: str, extra: str = "") -> str:
    return f"""
model_list:
  - model_name: m
    litellm_params:
      model: hosted_vllm/served
      api_base: {upstream.base}
    model_info:
      input_cost_per_token: {IN}
      output_cost_per_token: {OUT}
general_settings:
  master_key: sk-budget-master
sidecar_settings:
  keys:
    - name: team
      key: {KEY}
      {budget}
{extra}"""


class Clock:
    """The budgets' wall clock, moved by the test: periods are cut by it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def chats(upstream: FakeUpstream) -> list[Received]:
    return [r for r in upstream.received if r.path.endswith("/chat/completions")]


async def test_a_budget_is_reached_and_resets(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(
        table(upstream, f"max_budget: {COST * 2.5}\n      budget_duration: 1h")
    )
    clock = sidecar.running.gateway.budgets.clock = Clock(3600 * 1000 + 600)  # 10 min in
    client = sidecar.openai(KEY)
    for _ in range(3):  # the third starts under budget (2 spent of 2.5) and ends over it
        await client.chat.completions.create(model="m", messages=CHAT)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="m", messages=CHAT)
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "budget_exceeded"
    assert "team" in error["message"] and KEY not in error["message"]
    assert refused.value.response.headers["Retry-After"] == "3000"  # 50 minutes to the hour
    assert len(chats(upstream)) == 3  # the refused one never went upstream
    with pytest.raises(openai.RateLimitError):  # a stream too, before it starts
        await client.chat.completions.create(model="m", messages=CHAT, stream=True)
    async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/metrics") as r:
        metrics = await r.text()
    assert f'sidecar_budget_spent_usd{{key="team"}} {COST * 3:.12g}' in metrics
    assert f'sidecar_budget_max_usd{{key="team"}} {COST * 2.5:.12g}' in metrics
    clock.now += 3000  # the next hour
    await client.chat.completions.create(model="m", messages=CHAT)
    assert len(chats(upstream)) == 4
    # The master key has no budget: never refused.
    await sidecar.openai("sk-budget-master").chat.completions.create(model="m", messages=CHAT)


async def test_streams_spend_as_whole_replies_do(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """A stream's cost is known at its end (from the usage the sidecar asked for)."""
    sidecar = await make_sidecar(table(upstream, f"max_budget: {COST * 1.5}"))
    client = sidecar.openai(KEY)
    for _ in range(2):
        stream = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream])
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="m", messages=CHAT, stream=True)
    assert "Retry-After" not in refused.value.response.headers  # no duration: never resets
    assert "resets" not in refused.value.message


@pytest.mark.parametrize(
    ("budget", "where", "why"),
    [
        ("max_budget: 0", "max_budget", "above 0"),
        ("max_budget: 'ten'", "max_budget", "number of USD"),
        ("max_budget: .inf", "max_budget", "finite"),
        ("max_budget: 1\n      budget_duration: 1w", "budget_duration", "30s, 10m, 1h, 30d"),
        ("max_budget: 1\n      budget_duration: 30", "budget_duration", "30s, 10m, 1h, 30d"),
        ("budget_duration: 1d", "budget_duration", "needs max_budget"),
    ],
)
async def test_budgets_are_checked_at_load(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, budget: str, where: str, why: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        await make_sidecar(table(upstream, budget))
    assert f"sidecar_settings.keys[0].{where}" in str(raised.value)
    assert why in str(raised.value)


async def status(http: aiohttp.ClientSession, port: int) -> int:
    async with http.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"model": "m", "messages": CHAT},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as r:
        await r.read()
        return r.status


async def test_spend_is_shared_by_two_processes_and_outlives_them(
    upstream: FakeUpstream, redis: RedisServer, tmp_path: Path
) -> None:
    namespace = f"budget-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "t.yaml"
    budget = f"max_budget: {COST * 2.5}\n      budget_duration: 30d"
    text = table(upstream, budget)
    text += f"""router_settings:
  redis_host: 127.0.0.1
  redis_port: {redis.port}
"""
    text = text.replace(
        "sidecar_settings:\n",
        f"sidecar_settings:\n  shared_state:\n    namespace: {namespace}\n    sync_interval: 0.05\n",
    )
    path.write_text(text)
    one, one_port = start(path)
    two, two_port = start(path)
    try:
        await wait_ready(one_port)
        await wait_ready(two_port)
        async with aiohttp.ClientSession() as http:
            assert [await status(http, one_port) for _ in range(2)] == [200, 200]

            async def spent_seen(port: int, times: int) -> bool:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    text = await r.text()
                return f'sidecar_budget_spent_usd{{key="team"}} {COST * times:.12g}' in text

            await eventually(lambda: spent_seen(two_port, 2), True)
            assert await status(http, two_port) == 200  # 2 of 2.5 spent: this one may go
            await eventually(lambda: spent_seen(one_port, 3), True)
            assert [await status(http, p) for p in (one_port, two_port)] == [429, 429]
    finally:
        for proc in (one, two):
            code, _, err = stop(proc)
            assert code == 0, err
    client = redis_py.Redis(port=redis.port)
    try:
        (stored,) = list(client.scan_iter(f"{namespace}:spend:team:*"))
        assert float(client.get(stored) or 0) == pytest.approx(COST * 3)
        assert 0 < client.ttl(stored) <= 2 * 30 * 86400 + 60
    finally:
        client.close()
    # A restart does not reset it: a new process reads the sum before serving.
    three, three_port = start(path)
    try:
        await wait_ready(three_port)
        async with aiohttp.ClientSession() as http:
            assert await status(http, three_port) == 429
    finally:
        code, _, err = stop(three)
        assert code == 0, err
    assert len(chats(upstream)) == 3


async def test_without_redis_the_budget_is_this_processs(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """Two sidecars without shared state keep a budget each (the README says so)."""
    text = table(upstream, f"max_budget: {COST * 0.5}")
    one: Sidecar = await make_sidecar(text)
    two: Sidecar = await make_sidecar(text)
    for sidecar in (one, two):
        client = sidecar.openai(KEY)
        await client.chat.completions.create(model="m", messages=CHAT)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="m", messages=CHAT)


@pytest.mark.parametrize(
    ("duration", "now", "resets_in"),
    [
        # As LiteLLM resets them, in UTC: days at midnight, weeks on Monday, 30d and 1mo on the 1st.
        ("1d", "2026-12-02T23:59:00", 60),
        ("7d", "2026-12-06T23:58:00", 120),  # a Sunday
        ("30d", "2026-12-31T23:59:30", 30),
        ("1mo", "2027-02-28T23:00:00", 3600),
        ("2h", "2026-12-02T01:30:00", 1800),  # others: multiples of themselves since the epoch
    ],
)
async def test_periods_end_where_litellms_do(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, duration: str, now: str, resets_in: int
) -> None:
    import datetime

    sidecar = await make_sidecar(
        table(upstream, f"max_budget: {COST / 2}\n      budget_duration: {duration}")
    )
    at = datetime.datetime.fromisoformat(now).replace(tzinfo=datetime.UTC).timestamp()
    clock = sidecar.running.gateway.budgets.clock = Clock(at)
    client = sidecar.openai(KEY)
    await client.chat.completions.create(model="m", messages=CHAT)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="m", messages=CHAT)
    assert refused.value.response.headers["Retry-After"] == str(resets_in)
    clock.now += resets_in
    await client.chat.completions.create(model="m", messages=CHAT)  # a new period


async def test_on_redis_down_deny_governs_budgets_too(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, redis: RedisServer
) -> None:
    """Everyone's spend cannot be read: a budgeted key gets 503 under deny, others are served."""
    namespace = f"budget-{uuid.uuid4().hex[:8]}"
    text = table(upstream, "max_budget: 10")
    text += f"router_settings:\n  redis_host: 127.0.0.1\n  redis_port: {redis.port}\n"
    text = text.replace(
        "sidecar_settings:\n",
        f"sidecar_settings:\n  shared_state:\n    namespace: {namespace}\n"
        "    sync_interval: 0.05\n    on_redis_down: deny\n",
    )
    sidecar = await make_sidecar(text)
    client = sidecar.openai(KEY)
    await client.chat.completions.create(model="m", messages=CHAT)
    redis.stop()
    sync = sidecar.running.gateway.sync
    assert sync is not None
    await sync.tick()
    with pytest.raises(openai.InternalServerError) as refused:
        await client.chat.completions.create(model="m", messages=CHAT)
    assert refused.value.status_code == 503
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "shared_state_unavailable"
    await sidecar.openai("sk-budget-master").chat.completions.create(model="m", messages=CHAT)
