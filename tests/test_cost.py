"""Prices and what replies cost: LiteLLM's price keys, the cost headers, the access log and
/metrics, checked against the fake upstream's usage (5 prompt and 3 completion tokens for chat,
2 and 4 for text completions)."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from sidecar.deployment import ConfigError
from tests.conftest import MakeSidecar, Sidecar
from tests.fakes import FakeUpstream, Received

KEY = "sk-cost-test-key"
IN, OUT = 0.000002, 0.000010  # USD per token
CHAT_COST = 5 * IN + 3 * OUT
TEXT_COST = 2 * IN + 4 * OUT


def table(upstream: FakeUpstream, where: str) -> str:
    prices = f"input_cost_per_token: {IN}\n      output_cost_per_token: {OUT}"
    in_params = prices if where == "litellm_params" else ""
    in_info = f"    model_info:\n      {prices}\n" if where == "model_info" else ""
    return f"""
model_list:
  - model_name: priced
    litellm_params:
      model: hosted_vllm/served
      api_base: {upstream.base}
      {in_params}
{in_info}  - model_name: free
    litellm_params:
      model: hosted_vllm/served
      api_base: {upstream.base}
general_settings:
  master_key: {KEY}
"""


@pytest.mark.parametrize("where", ["litellm_params", "model_info"])
async def test_a_whole_reply_says_what_it_cost(
    upstream: FakeUpstream,
    make_sidecar: MakeSidecar,
    where: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sidecar = await make_sidecar(table(upstream, where))
    client = sidecar.openai(KEY)
    raw = await client.chat.completions.with_raw_response.create(
        model="priced", messages=[{"role": "user", "content": "hi"}]
    )
    assert float(raw.headers["x-sidecar-cost"]) == pytest.approx(CHAT_COST)
    assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(CHAT_COST)
    assert raw.parse().usage is not None and raw.parse().usage.prompt_tokens == 5
    free = await client.chat.completions.with_raw_response.create(
        model="free", messages=[{"role": "user", "content": "hi"}]
    )
    assert "x-sidecar-cost" not in free.headers  # no prices: no cost is told
    # A stream's cost cannot go in its head; the log line and /metrics have it.
    stream = await client.completions.create(
        model="priced", prompt="Once", stream=True, stream_options={"include_usage": True}
    )
    async for _ in stream:
        pass
    async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/metrics") as r:
        metrics = await r.text()
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith('sidecar_spend_usd_total{key="master",model="priced"}')
    )
    assert float(line.split()[-1]) == pytest.approx(CHAT_COST + TEXT_COST)
    assert 'model="free"' not in "\n".join(x for x in metrics.splitlines() if "spend" in x)
    sidecar.running.gateway.access_log.flush()
    logged = [json.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    costs = [x.get("cost") for x in logged if x.get("model") == "priced"]
    assert costs == [pytest.approx(CHAT_COST), pytest.approx(TEXT_COST)]


# A chat reply with the fake's usage, as a script writes it.
USAGE_REPLY = {
    "object": "chat.completion",
    "choices": [],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3},
}


async def priced_chat(sidecar: Sidecar) -> tuple[bytes, CIMultiDictProxy[str]]:
    """A chat call to the priced group: (the body, the headers) the client got."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/chat/completions",
            json={"model": "priced", "messages": []},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r,
    ):
        return await r.read(), r.headers


async def test_an_upstreams_own_cost_header_gives_way(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    async def with_cost(request: web.Request, got: Received) -> web.StreamResponse:
        return web.json_response(USAGE_REPLY, headers={"x-litellm-response-cost": "99"})

    upstream.scripts["/v1/chat/completions"] = with_cost
    sidecar = await make_sidecar(table(upstream, "litellm_params"))
    _, headers = await priced_chat(sidecar)
    assert headers.getall("x-litellm-response-cost") == [f"{CHAT_COST:.10g}"]


@pytest.mark.parametrize(
    ("value", "why"),
    [("-0.1", "at least 0"), ("'cheap'", "number of USD"), ("2", "under 1"), ("true", "not bool")],
)
async def test_prices_are_checked_at_load(make_sidecar: MakeSidecar, value: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        await make_sidecar(f"""
model_list:
  - model_name: m
    litellm_params: {{model: hosted_vllm/d, api_base: "http://127.0.0.1:1/v1", input_cost_per_token: {value}}}
""")
    assert "model_list[0].litellm_params.input_cost_per_token" in str(raised.value)
    assert why in str(raised.value)


async def test_counting_tokens_costs_nothing(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """count_tokens, tokenize and detokenize answer with token counts no model generated."""
    sidecar = await make_sidecar(table(upstream, "litellm_params"))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
        for path, body in [
            (
                "/v1/messages/count_tokens",
                {"model": "priced", "messages": [{"role": "user", "content": "hi"}]},
            ),
            ("/tokenize", {"model": "priced", "prompt": "hi"}),
        ]:
            async with http.post(sidecar.url + path, json=body) as r:
                assert r.status == 200, await r.text()
                assert "x-sidecar-cost" not in r.headers
                assert "x-litellm-response-cost" not in r.headers
        async with http.get(sidecar.url + "/metrics") as r:
            assert "sidecar_spend_usd_total{" not in await r.text()


async def test_a_chunked_whole_reply_says_what_it_cost(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """A JSON reply sent without a Content-Length (chunked) is still a whole reply."""
    body = json.dumps(USAGE_REPLY).encode()

    async def chunked(request: web.Request, got: Received) -> web.StreamResponse:
        reply = web.StreamResponse(
            headers={"Content-Type": "application/json", "x-litellm-response-cost": "99"}
        )
        reply.enable_chunked_encoding()
        await reply.prepare(request)
        for at in range(0, len(body), 16):
            await reply.write(body[at : at + 16])
        await reply.write_eof()
        return reply

    upstream.scripts["/v1/chat/completions"] = chunked
    sidecar = await make_sidecar(table(upstream, "model_info"))
    got, headers = await priced_chat(sidecar)
    assert got == body
    assert headers.getall("x-sidecar-cost") == [f"{CHAT_COST:.10g}"]
    assert headers.getall("x-litellm-response-cost") == [f"{CHAT_COST:.10g}"]
