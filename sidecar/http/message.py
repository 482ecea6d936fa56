"""A client's request as the server protocol hands it on, and the writer of its reply.

The Responder writes a whole reply in one write (head and body together) or a stream: the head
with its first bytes, each piece chunk-framed, the last piece with the end. Writes wait while
the client's socket buffer is full, which is what holds a fast upstream back for a slow reader.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sidecar.errors import Answer

Fields = Iterable[tuple[str, str]]

SERVER = b"Server: sidecar\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"  # said to HTTP/1.0 clients that asked for it
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
WHOLE_WRITE = 16 * 1024  # bytes of body up to which head and body are joined into one write
REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Request:
    """One request, whole: the head as parsed and the body as it came (decoded when it was
    gzip- or deflate-compressed). Header names are lower case; repeated fields are joined
    with ", " (RFC 9110 5.3)."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "target", "version")

    def __init__(self) -> None:
        self.method = ""
        self.target = ""  # the request target as sent: path and query, undecoded
        self.path = ""  # the target's path, undecoded: what routes match
        self.version = "1.1"
        self.headers: dict[str, str] = {}
        self.body = b""
        # What the client asked: HTTP/1.1 unless "close", HTTP/1.0 only with "keep-alive".
        self.keep_alive = True


class Connection(Protocol):
    """What a Responder needs of its connection (the server protocol)."""

    def send(self, data: bytes, more: bytes | None = None) -> None: ...

    async def drain(self) -> None: ...

    @property
    def write_paused(self) -> bool: ...

    def close(self) -> None: ...

    @property
    def closing(self) -> bool: ...


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class _Clock:
    """The Date header (RFC 9110 6.6.1: IMF-fixdate, in English whatever the locale),
    formatted once a second."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def date(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            t = time.gmtime(second)
            self.line = b"Date: %s, %02d %s %d %02d:%02d:%02d GMT\r\n" % (
                _DAYS[t.tm_wday].encode(),
                t.tm_mday,
                _MONTHS[t.tm_mon - 1].encode(),
                t.tm_year,
                t.tm_hour,
                t.tm_min,
                t.tm_sec,
            )
        return self.line


CLOCK = _Clock()


class Tee:
    """A copy of a reply's body as it is written (a stream's pieces without their chunk
    framing), and its content type (set by whoever knows it); given up past `limit` bytes
    (then `parts` is None)."""

    __slots__ = ("content_type", "limit", "parts", "size")
    # A copy of the whole body (the cache's), which a reply that cannot be kept as it came
    # (close-delimited, compressed) gives up; a tee of the first bytes only does not.
    whole = True

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] | None = []
        self.content_type = ""

    def add(self, data: bytes) -> None:
        parts = self.parts
        if parts is not None:
            self.size += len(data)
            if self.size > self.limit:
                self.parts = None
            else:
                parts.append(data)


class Responder:
    """The reply to one request. `send` writes it whole; `start`, `write` and `end` stream it.
    `status` and `sent` (the body's bytes as written, a stream's chunk framing included) are
    what the access log reports."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_head",
        "_head_only",
        "_http10",
        "always",
        "done",
        "keep_alive",
        "sent",
        "started",
        "status",
        "tee",
    )

    def __init__(self, conn: Connection, request: Request) -> None:
        self._conn = conn
        self._head_only = request.method == "HEAD"
        self._http10 = request.version == "1.0"
        self.keep_alive = request.keep_alive
        self._chunked = True
        self._head = b""  # a stream's head, held until its first bytes
        self.always: tuple[tuple[str, str], ...] = ()  # fields every head of this reply carries
        self.status = 0
        self.sent = 0
        self.started = False  # a byte of the reply has been handed to the transport
        self.done = False  # the reply is complete
        self.tee: Tee | None = None  # set when the body is wanted too (the response cache)

    def _head_of(self, status: int, reason: str, fields: Fields, framing: bytes) -> bytes:
        self.status = status
        if self._conn.closing:
            self.keep_alive = False
        lines = [f"HTTP/1.1 {status} {reason or REASONS.get(status, '')}\r\n"]
        for name, value in fields:
            lines.append(f"{name}: {value}\r\n")
        for name, value in self.always:
            lines.append(f"{name}: {value}\r\n")
        text = "".join(lines)
        try:
            # Upstream fields were read as latin-1, so they go back byte for byte.
            head = text.encode("latin-1")
        except UnicodeEncodeError:
            # One of ours holds more (a deployment named in Chinese): UTF-8, as aiohttp sent.
            head = text.encode("utf-8", "surrogateescape")
        tail = CLOCK.date() + SERVER + framing
        if not self.keep_alive:
            tail += _CLOSE
        elif self._http10:
            tail += _KEEP_ALIVE
        return head + tail + b"\r\n"

    def send(self, status: int, fields: Fields, body: bytes, reason: str = "") -> None:
        """The whole reply, head and body in one write."""
        head = self._head_of(status, reason, fields, b"Content-Length: %d\r\n" % len(body))
        self.started = self.done = True
        if self.tee is not None:
            self.tee.add(body)
        if self._head_only:
            self._conn.send(head)
        elif len(body) <= WHOLE_WRITE:
            self._conn.send(head + body)
        else:
            self._conn.send(head, body)  # no copy of a large body
        self.sent = len(body)

    def send_answer(self, answer: Answer) -> None:
        self.send(answer.status, answer.headers, answer.body)

    def start(self, status: int, fields: Fields, reason: str = "") -> None:
        """A streamed reply (chunked; close-delimited to an HTTP/1.0 client): its head leaves
        with the first bytes."""
        if self._http10:
            self.keep_alive = False
            framing = b""
            self._chunked = False
        else:
            framing = _CHUNKED
        self._head = self._head_of(status, reason, fields, framing)

    def _framed(self, data: bytes, end: bool) -> bytes:
        """A piece of a stream as it goes on the wire: chunk-framed (unless close-delimited),
        the last chunk after it when it ends the stream, the head before it when it is the
        first."""
        if self.tee is not None and data:
            self.tee.add(data)
        if self._chunked:
            out = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
            if end:
                out += _LAST_CHUNK
        else:
            out = data
        self.sent += len(out)
        if not self.started:
            self.started = True
            out = self._head + out
        return out

    async def write(self, data: bytes) -> None:
        """One piece of a stream, written now; waits while the client is slow."""
        if not data:
            return
        conn = self._conn
        conn.send(self._framed(data, False))
        if conn.write_paused:
            await conn.drain()

    def pipe(self, data: bytes, end: bool) -> bool:
        """A piece of a stream written from a callback (no await), the end with the last
        piece. False when the client's buffer is full: the caller stops feeding it until
        drain()."""
        if end:
            self.end(data)
            return True
        if data:
            self._conn.send(self._framed(data, False))
        return not self._conn.write_paused

    async def drain(self) -> None:
        await self._conn.drain()

    def end(self, data: bytes = b"") -> None:
        """The stream's last bytes and its end, in one write."""
        self.done = True
        self._conn.send(self._framed(data, True))
        if not self._chunked:
            self._conn.close()  # a close-delimited body ends with the connection

    def end_with(self, parts: list[bytes]) -> None:
        """The rest of a stream, each part its own chunk, and its end: all in one write (a
        stream replayed from memory need not wait between its events)."""
        if self._chunked:
            out = b"".join([b"%x\r\n%b\r\n" % (len(p), p) for p in parts if p]) + _LAST_CHUNK
        else:
            out = b"".join(parts)
        self.sent += len(out)
        if not self.started:
            self.started = True
            out = self._head + out
        self.done = True
        self._conn.send(out)
        if not self._chunked:
            self._conn.close()

    def abort(self) -> None:
        """End the connection without the end of the reply, so that a cut reply reads as cut."""
        self.keep_alive = False
        self._conn.close()
