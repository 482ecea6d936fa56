"""A stream's usage when its client did not ask for it: the upstream is asked for
`stream_options.include_usage`, and the chunk that adds (a `usage` object and no output:
`"choices":[]` from OpenAI and vLLM, one choice with an empty delta from LiteLLM, just before
`[DONE]`) is taken out of what the client receives. So every stream is counted (tpm, spend,
metrics) and the client's stream is the one it asked for: a client that reads
`chunk.choices[0].delta.content` of every chunk would fail on OpenAI's usage chunk.

Asking is pure; the strip is a sink in front of the client's, and costs an `endswith` and an
`in` per read of a stream that does not name "usage".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from sidecar.routes import Endpoint

USAGE_ENDPOINTS = (Endpoint.CHAT, Endpoint.COMPLETIONS)
HOLD = 64 * 1024  # bytes of an unfinished event held back at most (the usage chunk is small)

# A usage object as JSON encoders write it: compact (orjson, pydantic, Go, nlohmann's, serde's)
# or with Python's default separators (LiteLLM's, llama-cpp-python's). Searched for from the
# end, where the usage chunk is.
_USAGE_OBJECTS = (b'"usage":{', b'"usage": {')
# A blank line after a line's end, each written with LF, CRLF or CR.
_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\n\r\n", b"\r\n\n", b"\r\r")
_ENDS = (b"\n\n", b"\r\n\r\n", b"\n\r\n")


def to_ask(endpoint: Endpoint, body: dict[str, Any]) -> bool:
    """Whether this request is a stream whose usage the sidecar must ask for itself."""
    if endpoint not in USAGE_ENDPOINTS or body.get("stream") is not True:
        return False
    options = body.get("stream_options")
    if options is None:
        return True
    # Not an object: the upstream's to refuse as it came.
    return isinstance(options, dict) and options.get("include_usage") is not True


def asking(body: dict[str, Any]) -> dict[str, Any]:
    """The body with stream_options.include_usage on, the client's other options kept but
    vLLM's continuous_usage_stats: that has no effect without include_usage (the stream the
    client asked for has no usage), and with it would put usage in every chunk."""
    options = {**(body.get("stream_options") or {}), "include_usage": True}
    options.pop("continuous_usage_stats", None)
    return {**body, "stream_options": options}


Sink = Callable[[bytes, bool], bool]


class Strip:
    """A sink that passes a stream on without its usage-only chunk. An unfinished event at
    the end of a read is held until its end comes (the client could do nothing with half an
    event), so that a usage chunk split across reads is still recognised."""

    __slots__ = ("held", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.held = b""

    def __call__(self, data: bytes, end: bool) -> bool:
        if self.held:
            data = self.held + data
            self.held = b""
        if not end and not data.endswith(_ENDS):
            cut = _last_boundary(data)
            if len(data) - cut <= HOLD:
                data, self.held = data[:cut], data[cut:]
        if b'"usage"' in data:
            data = without_usage(data)
        return self.sink(data, end)


def without_usage(events: bytes) -> bytes:
    """Whole events without the usage-only one among them."""
    for marker in _USAGE_OBJECTS:
        end = len(events)
        while (at := events.rfind(marker, 0, end)) >= 0:
            start = _event_start(events, at)
            stop = _next_boundary(events, at)
            if only_usage(events[start:stop]):
                # One a stream: it is the last event before [DONE], so nothing earlier in
                # the read is searched (a read of a whole stream is kilobytes).
                return events[:start] + events[stop:]
            end = start
    return events


def _event_start(events: bytes, at: int) -> int:
    """Where the event holding `at` starts: the start of its line when the line before is
    blank (a usage chunk is one `data:` line), else after the last blank line before it."""
    line = events.rfind(b"\n", 0, at) + 1
    cr = events.rfind(b"\r", line, at)  # a CR-only stream's line break
    if cr >= 0:
        line = cr + 1
    if line == 0 or events.endswith(_BOUNDARIES, 0, line):
        return line
    return _last_boundary(events, at)


def only_usage(event: bytes) -> bool:
    """Whether this event is a chunk with a usage and no output. Usage put on a chunk that
    has output (a finish reason, text) stays: the chunk is the client's, and a usage field
    it did not ask for breaks no client."""
    if event.startswith(b"data: ") and event.count(b"\n") <= 2 and b"\r" not in event:
        data = event[6:]  # one data line: its blank line is whitespace to JSON
    else:
        data = b"\n".join(
            line[6:] if line.startswith(b"data: ") else line[5:]
            for line in event.splitlines()
            if line.startswith(b"data:")
        )
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
        return False
    choices = chunk.get("choices")
    return isinstance(choices, list) and all(
        isinstance(c, dict)
        and not c.get("delta")
        and not c.get("text")
        and c.get("finish_reason") is None
        and not c.get("logprobs")
        for c in choices
    )


def _last_boundary(data: bytes, before: int | None = None) -> int:
    """Where the event holding `before` (or the unfinished last one) starts."""
    end = len(data) if before is None else before
    cut = 0
    for boundary in _BOUNDARIES:
        at = data.rfind(boundary, 0, end)
        if at >= 0:
            cut = max(cut, at + len(boundary))
    return cut


def _next_boundary(data: bytes, after: int) -> int:
    """Where the event holding `after` ends (its blank line included)."""
    lf = data.find(b"\n\n", after)
    if data.find(b"\r", after, lf if lf >= 0 else len(data)) < 0:
        return lf + 2 if lf >= 0 else len(data)
    ends = [at + len(b) for b in _BOUNDARIES if (at := data.find(b, after)) >= 0]
    return min(ends) if ends else len(data)
