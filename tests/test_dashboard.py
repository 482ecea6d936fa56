"""The Grafana dashboard in deploy/grafana: importable JSON whose every query names metrics
(and labels) a real sidecar exports, with every feature on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream, free_port
from tests.redis_server import RedisServer

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "sidecar.json"
KEY = "sk-dashboard-key"
# A metric's name in a query: what a selector or a range follows.
_METRIC = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


async def exported(make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer) -> str:
    """/metrics of a sidecar with shared state, the cache, a budget and tracing, after traffic
    that fails over too (a group whose upstreams are down)."""
    dead = free_port()
    sidecar = await make_sidecar(f"""
model_list:
  - model_name: m
    litellm_params:
      model: hosted_vllm/served
      api_base: {upstream.base}
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: broken
    litellm_params:
      model: hosted_vllm/a
      api_base: http://127.0.0.1:{dead}/v1
  - model_name: broken
    litellm_params:
      model: hosted_vllm/b
      api_base: http://127.0.0.1:{dead}/v1
router_settings:
  redis_host: 127.0.0.1
  redis_port: {redis.port}
  num_retries: 1
  retry_after: 0
  allowed_fails: 0
  fallbacks: [{{broken: [m]}}]
litellm_settings:
  cache: true
general_settings:
  master_key: sk-dashboard-master
sidecar_settings:
  keys:
    - name: team
      key: {KEY}
      max_budget: 10
      budget_duration: 1d
  otel:
    endpoint: http://127.0.0.1:{free_port()}
    timeout: 1
""")
    client = sidecar.openai(KEY)
    for _ in range(2):  # a miss, then a hit
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "y"}], stream=True
    )
    assert [c async for c in stream]
    for _ in range(3):  # retried, cooled down, then served by the fallback
        await client.chat.completions.create(
            model="broken", messages=[{"role": "user", "content": "z"}]
        )
    async with aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/v1/chat/completions", json={}) as r:
            assert r.status == 401
        async with http.get(sidecar.url + "/metrics") as r:
            return await r.text()


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "__inputs" not in dashboard  # imports as it is: the data source is picked on import
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


async def test_every_query_names_what_the_sidecar_exports(
    make_sidecar: MakeSidecar, upstream: FakeUpstream, redis: RedisServer
) -> None:
    text = await exported(make_sidecar, upstream, redis)
    types = dict(re.findall(r"(?m)^# TYPE (\S+) (\S+)$", text))
    names = set(types)
    for name, kind in types.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    # The labels each exported series has, by its name.
    labels: dict[str, set[str]] = {}
    for name, inner in re.findall(r"(?m)^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", text):
        labels.setdefault(name, set()).update(re.findall(r'(\w+)="', inner))
    scraped = {"job", "instance", "le"}  # added by Prometheus, or a histogram's own
    dashboard = json.loads(DASHBOARD.read_text())
    wanted = {
        "sidecar_requests_total", "sidecar_upstream_errors_total", "sidecar_request_duration_seconds_bucket",
        "sidecar_upstream_ttfb_seconds_bucket", "sidecar_tokens_total", "sidecar_spend_usd_total",
        "sidecar_cooldowns_total", "sidecar_cache_requests_total", "sidecar_redis_up",
        "gen_ai_server_time_to_first_token_bucket", "sidecar_budget_spent_usd",
    }  # fmt: skip
    seen: set[str] = set()
    for query in queries(dashboard):
        metrics = set(_METRIC.findall(query))
        assert metrics, f"no metric in {query}"
        assert metrics <= names, f"{sorted(metrics - names)} in {query} are not exported"
        seen |= metrics
        for group in _BY.findall(query):
            for label in (x.strip() for x in group.split(",") if x.strip()):
                if label in scraped:
                    continue
                assert any(label in labels.get(m, set()) for m in metrics), (label, query)
    # What the issue asks the dashboard to show is all there.
    assert wanted <= seen, sorted(wanted - seen)
