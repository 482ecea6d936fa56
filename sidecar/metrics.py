"""Prometheus metrics: a few counters kept in plain dicts, rendered on scrape.

Recording costs a dict update and no lock: one process runs one event loop. Metric names are
public API (the README lists them); labels carry only configured names, never client input.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from sidecar.histogram import (
    FIRST_TOKEN_BUCKETS,
    TOKEN_BUCKETS,
    Histogram,
    PairHistogram,
    regrouped,
)
from sidecar.routes import OPERATIONS

# The endpoint label of our duration histogram -> gen_ai.operation.name.
_OPERATION_OF = {e.name.lower(): operation for e, operation in OPERATIONS.items()}

UNKNOWN = ""  # the model label of a request that named no configured model


class SharedView(Protocol):
    """What /metrics shows of shared state (shared.sync.Sync)."""

    def gauges(self) -> tuple[bool, float | None, int]: ...  # up, sync age, live instances


class BudgetView(Protocol):
    """What /metrics shows of the keys' budgets (budgets.Budgets)."""

    def spent(self) -> list[tuple[str, float, float]]: ...  # key, spent in its period, budget


class TracingView(Protocol):
    """What /metrics shows of the trace export (tracing.Tracing)."""

    def counts(self) -> tuple[int, int, int]: ...  # spans exported, spans dropped, failed exports


class Metrics:
    enabled = True

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, str, int], int] = defaultdict(int)
        self.in_flight = 0
        self.upstream_errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.retries: defaultdict[str, int] = defaultdict(int)
        self.fallbacks: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.cooldowns: defaultdict[str, int] = defaultdict(int)
        self.streams_in_flight = 0
        self.duration = Histogram()  # by endpoint and model group
        self.ttfb = Histogram()  # by deployment
        self.tokens: defaultdict[tuple[str, str], int] = defaultdict(int)  # (model, kind)
        # OpenTelemetry's GenAI metrics, by operation and model group (and token type).
        self.genai_tokens = PairHistogram(TOKEN_BUCKETS, ("input", "output"))
        self.genai_first_token = Histogram(FIRST_TOKEN_BUCKETS)
        self.shared: SharedView | None = None  # set when a Redis is configured
        self.budgets: BudgetView | None = None  # set by the gateway
        self.tracing: TracingView | None = None  # set when tracing is configured
        self.cache: defaultdict[tuple[str, str], int] = defaultdict(int)  # (model, result)
        self.spent: defaultdict[tuple[str, str], float] = defaultdict(float)  # (key, model)

    def usage(self, model: str, prompt: int, completion: int, operation: str) -> None:
        self.tokens[(model, "prompt")] += prompt
        self.tokens[(model, "completion")] += completion
        self.genai_tokens.observe_pair((operation, model), prompt, completion)

    def retry(self, model: str) -> None:
        self.retries[model] += 1

    def spend(self, key: str, model: str, usd: float) -> None:
        self.spent[(key, model)] += usd

    def cached(self, model: str, result: str) -> None:
        self.cache[(model, result)] += 1

    def fallback(self, model: str, to: str) -> None:
        self.fallbacks[(model, to)] += 1

    def cooldown(self, deployment: str) -> None:
        self.cooldowns[deployment] += 1

    def done(self, endpoint: str, model: str, deployment: str, status: int) -> None:
        self.requests[(endpoint, model, deployment, status)] += 1

    def upstream_error(self, deployment: str, kind: str) -> None:
        self.upstream_errors[(deployment, kind)] += 1

    def render(self) -> bytes:
        lines = [
            "# HELP sidecar_requests_total Requests answered, by endpoint, model group, deployment and status.",
            "# TYPE sidecar_requests_total counter",
        ]
        for (endpoint, model, deployment, status), count in self.requests.items():
            labels = _labels(
                endpoint=endpoint, model=model, deployment=deployment, status=str(status)
            )
            lines.append(f"sidecar_requests_total{{{labels}}} {count}")
        lines += [
            "# HELP sidecar_requests_in_flight Requests being served now.",
            "# TYPE sidecar_requests_in_flight gauge",
            f"sidecar_requests_in_flight {self.in_flight}",
            "# HELP sidecar_upstream_errors_total Upstream calls that failed, by deployment and kind.",
            "# TYPE sidecar_upstream_errors_total counter",
        ]
        for (deployment, kind), count in self.upstream_errors.items():
            lines.append(
                f"sidecar_upstream_errors_total{{{_labels(deployment=deployment, kind=kind)}}} {count}"
            )
        lines += [
            "# HELP sidecar_streams_in_flight Streamed replies being relayed now.",
            "# TYPE sidecar_streams_in_flight gauge",
            f"sidecar_streams_in_flight {self.streams_in_flight}",
        ]
        lines += _histogram(
            "sidecar_request_duration_seconds",
            "Time from a request's arrival to the end of its reply (streams included).",
            ("endpoint", "model"),
            self.duration,
        )
        lines += _histogram(
            "sidecar_upstream_ttfb_seconds",
            "Time from sending a request upstream to the upstream reply's head.",
            ("deployment",),
            self.ttfb,
        )
        genai = ("gen_ai_operation_name", "gen_ai_request_model")
        lines += _histogram(
            "gen_ai_client_token_usage",
            "Tokens a request used, by type (OpenTelemetry GenAI: gen_ai.client.token.usage).",
            (*genai, "gen_ai_token_type"),
            self.genai_tokens,
        )
        lines += _histogram(
            "gen_ai_server_time_to_first_token",
            "Seconds from a streamed request's arrival to its first bytes of output "
            "(OpenTelemetry GenAI: gen_ai.server.time_to_first_token).",
            genai,
            self.genai_first_token,
        )
        lines += _histogram(
            "gen_ai_server_request_duration",
            "Seconds from a request's arrival to its reply's end "
            "(OpenTelemetry GenAI: gen_ai.server.request.duration): "
            "sidecar_request_duration_seconds by operation.",
            genai,
            regrouped(self.duration, _OPERATION_OF),
        )
        lines += [
            "# HELP sidecar_tokens_total Tokens, as upstreams report them in `usage`.",
            "# TYPE sidecar_tokens_total counter",
        ]
        lines += [
            f"sidecar_tokens_total{{{_labels(model=m, kind=k)}}} {n}"
            for (m, k), n in self.tokens.items()
        ]
        lines += [
            "# HELP sidecar_spend_usd_total What replies cost (usage by the deployment's prices), "
            "by key and model group.",
            "# TYPE sidecar_spend_usd_total counter",
        ]
        lines += [
            f"sidecar_spend_usd_total{{{_labels(key=k, model=m)}}} {usd:.12g}"
            for (k, m), usd in self.spent.items()
        ]
        lines += [
            "# HELP sidecar_retries_total Upstream calls made again after a failure, by model group.",
            "# TYPE sidecar_retries_total counter",
        ]
        lines += [
            f"sidecar_retries_total{{{_labels(model=m)}}} {n}" for m, n in self.retries.items()
        ]
        lines += [
            "# HELP sidecar_fallbacks_total Requests passed on to a fallback group.",
            "# TYPE sidecar_fallbacks_total counter",
        ]
        lines += [
            f"sidecar_fallbacks_total{{{_labels(model=m, to=t)}}} {n}"
            for (m, t), n in self.fallbacks.items()
        ]
        lines += [
            "# HELP sidecar_cooldowns_total Times a deployment was set aside after repeated failures.",
            "# TYPE sidecar_cooldowns_total counter",
        ]
        lines += [
            f"sidecar_cooldowns_total{{{_labels(deployment=d)}}} {n}"
            for d, n in self.cooldowns.items()
        ]
        if self.cache:
            lines += [
                "# HELP sidecar_cache_requests_total Requests the response cache answered (hit), missed or was bypassed by.",
                "# TYPE sidecar_cache_requests_total counter",
            ]
            lines += [
                f"sidecar_cache_requests_total{{{_labels(model=m, result=r)}}} {n}"
                for (m, r), n in self.cache.items()
            ]
        budgets = self.budgets.spent() if self.budgets is not None else []
        if budgets:
            lines += [
                "# HELP sidecar_budget_spent_usd What each key with a max_budget has spent in its current budget period.",
                "# TYPE sidecar_budget_spent_usd gauge",
                *(f"sidecar_budget_spent_usd{{{_labels(key=k)}}} {s:.12g}" for k, s, _ in budgets),
                "# HELP sidecar_budget_max_usd Each key's max_budget.",
                "# TYPE sidecar_budget_max_usd gauge",
                *(f"sidecar_budget_max_usd{{{_labels(key=k)}}} {b:.12g}" for k, _, b in budgets),
            ]
        if self.tracing is not None:
            exported, dropped, failed = self.tracing.counts()
            lines += [
                "# HELP sidecar_trace_spans_exported_total Spans the collector took.",
                "# TYPE sidecar_trace_spans_exported_total counter",
                f"sidecar_trace_spans_exported_total {exported}",
                "# HELP sidecar_trace_spans_dropped_total Spans lost: the export queue was full, or the collector refused or missed their batch.",
                "# TYPE sidecar_trace_spans_dropped_total counter",
                f"sidecar_trace_spans_dropped_total {dropped}",
                "# HELP sidecar_trace_export_failures_total Exports the collector did not take (down, slow or refusing).",
                "# TYPE sidecar_trace_export_failures_total counter",
                f"sidecar_trace_export_failures_total {failed}",
            ]
        if self.shared is not None:
            lines += _shared(self.shared)
        return ("\n".join(lines) + "\n").encode()


def _shared(view: SharedView) -> list[str]:
    up, age, instances = view.gauges()
    lines = [
        "# HELP sidecar_redis_up Whether the last sync with the shared state's Redis succeeded.",
        "# TYPE sidecar_redis_up gauge",
        f"sidecar_redis_up {int(up)}",
        "# HELP sidecar_shared_state_instances Live instances sharing the state, as of the last sync.",
        "# TYPE sidecar_shared_state_instances gauge",
        f"sidecar_shared_state_instances {instances}",
    ]
    if age is not None:
        lines += [
            "# HELP sidecar_shared_state_sync_age_seconds Seconds since the last good sync with Redis.",
            "# TYPE sidecar_shared_state_sync_age_seconds gauge",
            f"sidecar_shared_state_sync_age_seconds {age:.3f}",
        ]
    return lines


def _histogram(
    name: str, help_text: str, names: tuple[str, ...], histogram: Histogram
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for values, le, value in histogram.samples():
        labels = _labels(**dict(zip(names, values, strict=True)))
        number = f"{value:g}" if le == "sum" else str(int(value))
        if le in ("sum", "count"):
            lines.append(f"{name}_{le}{{{labels}}} {number}")
        else:
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {number}')
    return lines


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _NoHistogram(Histogram):
    def observe(self, labels: tuple[str, ...], value: float) -> None:
        pass


class NoMetrics(Metrics):
    """The switched-off twin (sidecar_settings.metrics: false): every record is a no-op, so
    that the request path pays a call and nothing else. The in-flight counts stay: they are
    what max_in_flight admits by."""

    enabled = False

    def __init__(self) -> None:
        super().__init__()
        self.duration = _NoHistogram()
        self.ttfb = _NoHistogram()
        self.genai_first_token = _NoHistogram()

    def usage(self, model: str, prompt: int, completion: int, operation: str) -> None:
        pass

    def retry(self, model: str) -> None:
        pass

    def spend(self, key: str, model: str, usd: float) -> None:
        pass

    def cached(self, model: str, result: str) -> None:
        pass

    def fallback(self, model: str, to: str) -> None:
        pass

    def cooldown(self, deployment: str) -> None:
        pass

    def done(self, endpoint: str, model: str, deployment: str, status: int) -> None:
        pass

    def upstream_error(self, deployment: str, kind: str) -> None:
        pass
