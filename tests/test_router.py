"""The router's decisions, with an injected clock and draw: no I/O, no sleeping."""

from __future__ import annotations

from typing import Any

from sidecar import config as configs
from sidecar.config import RouterSettings
from sidecar.router import Router
from sidecar.table import Group, Table


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def group(*entries: dict[str, Any]) -> Group:
    doc = {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {"model": f"hosted_vllm/d{i}", "api_base": "http://u/v1", **e},
                "model_info": {"id": f"d{i}"},
            }
            for i, e in enumerate(entries)
        ]
    }
    found = Table(configs.parse(doc, "t.yaml", {}).deployments).lookup("m")
    assert found is not None
    return found.group


def test_weights_split_the_draw() -> None:
    g = group({"weight": 1}, {"weight": 3})
    picks = [
        Router(RouterSettings(), draw=lambda x=x: x).choose(g) for x in (0.0, 0.24, 0.26, 0.99)
    ]
    assert [d.id for d in picks if d] == ["d0", "d0", "d1", "d1"]


def test_exclusion_and_nothing_left() -> None:
    g = group({}, {})
    router = Router(RouterSettings(), draw=lambda: 0.0)
    assert router.choose(g, {"d0"}).id == "d1"  # type: ignore[union-attr]
    assert router.choose(g, {"d0", "d1"}) is None


def test_least_busy() -> None:
    g = group({}, {}, {})
    router = Router(RouterSettings(routing_strategy="least-busy"), draw=lambda: 0.0)
    d0, d1, d2 = g.deployments
    router.started(d0, 0)
    router.started(d1, 0)
    assert router.choose(g) is d2
    router.started(d2, 0)
    router.started(d2, 0)
    router.finished(d0)
    assert router.choose(g) is d0


def test_latency_based_measures_then_prefers_the_fastest() -> None:
    g = group({}, {})
    draws = iter([0.5, 0.5, 0.5, 0.05, 0.99])
    router = Router(
        RouterSettings(routing_strategy="latency-based-routing"), draw=lambda: next(draws)
    )
    d0, d1 = g.deployments
    router.answered(d0, 0.2)
    assert router.choose(g) is d1  # not measured yet
    router.answered(d1, 0.05)
    assert router.choose(g) is d1
    router.answered(d0, 0.01)
    router.answered(d0, 0.01)
    assert router.choose(g) is d1  # smoothed: d0 ~0.1 s, still slower
    assert router.choose(g) is d1  # exploring (draw 0.05 < 0.1): weighted pick, draw 0.99


def test_cooldown_entry_and_exit() -> None:
    clock = Clock()
    g = group({}, {})
    router = Router(RouterSettings(allowed_fails=2, cooldown_time=5), clock=clock, draw=lambda: 0.0)
    d0, d1 = g.deployments
    assert not router.failed(d0, "error", 2)
    assert not router.failed(d0, "error", 2)
    assert router.failed(d0, "error", 2)  # the third within a minute
    assert router.choose(g) is d1
    clock.now += 5
    assert router.choose(g) is d0  # back


def test_failures_older_than_a_minute_do_not_count() -> None:
    clock = Clock()
    g = group({}, {})
    router = Router(RouterSettings(allowed_fails=1), clock=clock)
    d0 = g.deployments[0]
    router.failed(d0, "error", 2)
    clock.now += 61
    assert not router.failed(d0, "error", 2)


def test_a_lone_deployment_never_cools_down() -> None:
    g = group({})
    router = Router(RouterSettings(allowed_fails=0))
    assert not router.failed(g.deployments[0], "error", 1)
    assert router.choose(g) is g.deployments[0]


def test_blocked_says_why_and_how_long() -> None:
    clock = Clock()
    g = group({}, {})
    router = Router(RouterSettings(allowed_fails=0, cooldown_time=30), clock=clock)
    d0, d1 = g.deployments
    router.failed(d0, "rate_limit", 2)
    router.failed(d1, "rate_limit", 2)
    blocked = router.blocked(g)
    assert (blocked.status, blocked.retry_after) == (429, 30)
    clock.now += 10
    router.failed(d0, "error", 2)
    assert router.blocked(g).status == 503


def test_rpm_limit_over_a_sliding_minute() -> None:
    clock = Clock()
    g = group({"rpm": 2})
    router = Router(RouterSettings(enable_pre_call_checks=True), clock=clock)
    d0 = g.deployments[0]
    for _ in range(2):
        assert router.choose(g) is d0
        router.started(d0, 10)
        router.finished(d0)
    assert router.choose(g) is None
    assert router.blocked(g).status == 429
    clock.now += 90  # half of the last minute still counts: 1 of 2
    assert router.choose(g) is d0
    clock.now += 60
    assert router.choose(g) is d0


def test_tpm_limit() -> None:
    g = group({"tpm": 100})
    router = Router(RouterSettings(enable_pre_call_checks=True))
    d0 = g.deployments[0]
    router.started(d0, 99)
    assert router.choose(g) is d0
    router.started(d0, 1)
    assert router.choose(g) is None
