"""Server-Sent Events, incrementally: bytes in, the data of each complete event out.

Only what OpenAI-style streams use is kept: `data:` fields (several in one event are joined
with a newline, per the HTML standard's event-stream rules), events ended by a blank line,
comments and other fields skipped. Lines may end in LF, CRLF or CR, and the bytes of a line or
of a line ending may arrive split across any number of reads.
"""

from __future__ import annotations

MAX_EVENT = 8 * 1024 * 1024  # bytes an event may grow to before the stream is refused


class SSEError(Exception):
    """A stream that does not behave like Server-Sent Events."""


class Parser:
    __slots__ = ("_buffer", "_data", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._skip_lf = False  # the last read ended in CR: a LF that follows belongs to it

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event this chunk completes."""
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        end = len(buffer)
        while start < end:
            lf = buffer.find(b"\n", start)
            cr = buffer.find(b"\r", start, lf if lf >= 0 else end)
            if cr >= 0:
                stop, nxt = cr, cr + 1
                if nxt < end and buffer[nxt : nxt + 1] == b"\n":
                    nxt += 1
                elif nxt == end:
                    self._skip_lf = True
            elif lf >= 0:
                stop, nxt = lf, lf + 1
            else:
                break
            self._line(buffer[start:stop], events)
            start = nxt
        self._buffer = buffer[start:]
        if len(self._buffer) + sum(map(len, self._data)) > MAX_EVENT:
            raise SSEError("event too large")
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value[:1] == b" " else value)
        # Comments (":") and the event, id and retry fields change nothing here.


def encode(data: bytes) -> bytes:
    """One event carrying `data` (which must hold no line break: JSON from orjson never does)."""
    return b"data: " + data + b"\n\n"
