"""OpenTelemetry traces: one span per model request, with the GenAI conventions' attributes,
exported over OTLP/HTTP from a thread of its own. Imported only when tracing is configured
(the SDK is the `otel` extra); off, the gateway holds None and pays one `is None` a request.

The span's ids are made when the request arrives (the upstream is sent a `traceparent`
naming it), and the span itself is built when the request ends, from what the access log
learns, as the SDK's finished-span record (ReadableSpan) that its exporter takes: a tracer's
live span, with its sampler, locks and attribute checks, costs twenty times as much, for a
span that is over before it is made. A client's W3C `traceparent` is continued: the
span is its child, and a parent that is not sampled is followed (no span is exported).

The export never holds a request: spans wait in a bounded queue, a thread sends them in
batches, and what a full queue cannot take is dropped and counted (/metrics).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

from sidecar import __version__
from sidecar.config.otel import OtelSettings
from sidecar.outcome import Outcome
from sidecar.routes import OPERATIONS, Endpoint

BATCH = 512  # spans sent in one export at most
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)
DELAY = 1.0  # seconds a span waits for its batch at most
# W3C Trace Context: version, trace id, parent id, flags (version ff is invalid).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")

# gen_ai.provider.name, by the table's provider prefix.
PROVIDERS = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "azure": "azure.ai.openai",
    "azure_text": "azure.ai.openai",
    "hosted_vllm": "vllm",
    "llamafile": "llamafile",
}


class Trace(NamedTuple):
    """A request's place in a trace, fixed when it arrives."""

    trace_id: int
    span_id: int
    parent_id: int | None  # the client's span, when it sent a traceparent
    sampled: bool
    state: str | None  # the client's tracestate, passed on
    start_ns: int

    def header(self) -> bytes:
        """The traceparent (and tracestate) the upstream is sent: our span as its parent."""
        line = b"traceparent: 00-%032x-%016x-%s\r\n" % (
            self.trace_id,
            self.span_id,
            b"01" if self.sampled else b"00",
        )
        if self.state is not None:
            line += b"tracestate: " + self.state.encode() + b"\r\n"
        return line


def parent(headers: Mapping[str, str]) -> tuple[int, int, bool, str | None] | None:
    """(trace id, span id, sampled, tracestate) of a valid client traceparent, else None."""
    value = headers.get("traceparent")
    if value is None:
        return None
    found = _TRACEPARENT.fullmatch(value.strip())
    if found is None or found.group(1) == "ff":
        return None
    trace_id, span_id = int(found.group(2), 16), int(found.group(3), 16)
    if not trace_id or not span_id or (found.group(1) == "00" and len(found.group(0)) != 55):
        return None  # version 00 has exactly these four fields
    state = headers.get("tracestate")
    if state is not None and _TRACESTATE.fullmatch(state) is None:
        state = None
    return trace_id, span_id, bool(int(found.group(4), 16) & 1), state


class SpanQueue:
    """Ended spans, held for a thread that exports them in batches. Bounded: a slow or dead
    collector costs dropped spans, counted, never a request's time. Each counter has one
    writer (the loop's thread, or the export's), so none loses a count to the other."""

    def __init__(self, exporter: Any, limit: int) -> None:
        self.exporter = exporter
        self.limit = limit
        self.spans: deque[ReadableSpan] = deque()
        self.refused = 0  # spans a full queue could not take (the loop's thread)
        self.lost = 0  # spans of failed exports (the export's thread)
        self.exported = 0
        self.failures = 0  # exports the collector did not take
        self._wake = threading.Event()
        self._stopping = False
        self._closed = False  # the exporter is shut down: nothing more is sent
        self._thread = threading.Thread(target=self._run, name="sidecar-otlp", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        if len(self.spans) >= self.limit:
            self.refused += 1
            return
        self.spans.append(span)
        if len(self.spans) >= BATCH:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(DELAY)
            self._wake.clear()
            self._send()

    def _send(self) -> None:
        while self.spans and not self._closed:
            batch = [self.spans.popleft() for _ in range(min(BATCH, len(self.spans)))]
            try:
                result = self.exporter.export(batch)
            except Exception:  # an exporter's bug must not end the thread
                result = SpanExportResult.FAILURE
            if result is SpanExportResult.SUCCESS:
                self.exported += len(batch)
            else:
                self.failures += 1
                self.lost += len(batch)
                return  # the next wake tries the rest

    def shutdown(self, timeout: float = 2.0) -> None:
        """What is queued sent (within `timeout`), then the thread and the exporter stopped."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._send()
        self._closed = True
        self.exporter.shutdown()


class Tracing:
    def __init__(self, settings: OtelSettings, exporter: Any = None) -> None:
        self.resource = Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        )
        self.scope = InstrumentationScope("sidecar", __version__)
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=settings.traces_url,
                headers=dict(settings.headers) or None,
                timeout=settings.timeout,
            )
        self.queue = SpanQueue(exporter, settings.max_queue)
        self._random = random.Random()
        # As OpenTelemetry's TraceIdRatioBased: a new trace is kept when its id's low 64 bits
        # fall under the ratio's share of them, so every service keeps the same traces.
        self._keep_below = round(settings.sample_ratio * (1 << 64))

    def begin(self, headers: Mapping[str, str]) -> Trace:
        """A request's trace: the client's continued, or a new one."""
        span_id = self._random.getrandbits(64) or 1
        found = parent(headers)
        if found is None:
            trace_id = self._random.getrandbits(128) or 1
            sampled = (trace_id & 0xFFFFFFFFFFFFFFFF) < self._keep_below
            return Trace(trace_id, span_id, None, sampled, None, time.time_ns())
        trace_id, parent_id, sampled, state = found
        return Trace(trace_id, span_id, parent_id, sampled, state, time.time_ns())

    def end(self, begun: Trace, name: str, attributes: dict[str, Any], failed: bool) -> None:
        """The request's span, made and queued now that it is over."""
        if not begun.sampled:
            return
        parent = None
        if begun.parent_id is not None:
            parent = SpanContext(
                begun.trace_id,
                begun.parent_id,
                is_remote=True,
                trace_flags=_SAMPLED,
                trace_state=TraceState.from_header([begun.state]) if begun.state else None,
            )
        span = ReadableSpan(
            name,
            SpanContext(begun.trace_id, begun.span_id, is_remote=False, trace_flags=_SAMPLED),
            parent,
            self.resource,
            attributes,
            kind=SpanKind.SERVER,
            instrumentation_scope=self.scope,
            status=_ERROR if failed else _UNSET,
            start_time=begun.start_ns,
            end_time=time.time_ns(),
        )
        self.queue.on_end(span)

    def record(self, endpoint: Endpoint | None, outcome: Outcome, status: int) -> None:
        """The span of a request that has ended, with the GenAI attributes it has."""
        assert outcome.trace is not None and endpoint is not None
        operation = OPERATIONS[endpoint]
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": outcome.asked,
            "http.response.status_code": status,
        }
        deployment = outcome.upstream
        if deployment is not None:
            attributes["gen_ai.provider.name"] = PROVIDERS.get(
                deployment.provider, deployment.provider
            )
            attributes["sidecar.deployment"] = deployment.id
            if deployment.origin is not None:
                attributes["server.address"] = deployment.origin.host
                attributes["server.port"] = deployment.origin.port
        if outcome.response_model is not None:
            attributes["gen_ai.response.model"] = outcome.response_model
        if outcome.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = outcome.usage[0]
            attributes["gen_ai.usage.output_tokens"] = outcome.usage[1]
        if outcome.key:
            attributes["sidecar.key"] = outcome.key
        if outcome.cost is not None:
            attributes["sidecar.cost_usd"] = outcome.cost
        if status >= 400:
            attributes["error.type"] = str(status)
        name = f"{operation} {outcome.asked}" if outcome.asked else operation
        self.end(outcome.trace, name, attributes, status >= 500)

    def counts(self) -> tuple[int, int, int]:
        """For /metrics: spans exported, spans dropped, failed exports."""
        queue = self.queue
        return queue.exported, queue.refused + queue.lost, queue.failures

    def shutdown(self) -> None:
        self.queue.shutdown()
