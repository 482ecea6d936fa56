"""An incremental HTTP/1.1 response parser: bytes in, callbacks out, no I/O.

It reads what an upstream sends back (RFC 9112): the status line and header fields, then a
body framed by Transfer-Encoding: chunked, by Content-Length, or by the connection's close.
Bytes may arrive split anywhere; the parser keeps what it cannot use yet.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_HEAD = 64 * 1024  # bytes of status line and header fields an upstream may send
MAX_REASON = 13 + 64  # bytes of a status line kept for its reason phrase
MAX_CHUNK_LINE = 4096  # bytes of a chunk-size line, extensions included


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _head_end(data: bytes) -> tuple[int, int]:
    """Where the head ends and the body starts: at the first empty line, its lines ended by
    CRLF or, as RFC 9112 2.2 allows a recipient to accept, a bare LF; (-1, -1) when not yet."""
    crlf = data.find(b"\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return -1, -1
    if lf < 0 or 0 <= crlf < lf:
        end = crlf
        return (end - 1 if data[end - 1 : end] == b"\r" else end), end + 3
    return (lf - 1 if data[lf - 1 : lf] == b"\r" else lf), lf + 2


class ProtocolError(Exception):
    """The upstream sent something that is not HTTP/1.1."""


Headers = list[tuple[str, str]]

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """Feed it bytes; it calls on_head(status, headers), on_body(bytes) and on_end()."""

    __slots__ = (
        "_buffer",
        "_left",
        "_state",
        "keep_alive",
        "length",
        "on_body",
        "on_end",
        "on_head",
        "reason",
    )

    def __init__(
        self,
        on_head: Callable[[int, Headers], None],
        on_body: Callable[[bytes], None],
        on_end: Callable[[], None],
    ) -> None:
        self.on_head = on_head
        self.on_body = on_body
        self.on_end = on_end
        self._buffer = b""
        self._state = _HEAD
        self._left = 0
        self.keep_alive = True  # False once the reply says the connection is not reusable
        self.length: int | None = None  # the body's length, when the head states it
        self.reason = ""  # the status line's reason phrase, for error messages

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        while data:
            state = self._state
            if state == _LENGTH:
                if len(data) < self._left:
                    self._left -= len(data)
                    self.on_body(data)
                    return
                body, data = data[: self._left], data[self._left :]
                self._left = 0
                if body:
                    self.on_body(body)
                self._finish()
                if data:
                    raise ProtocolError("bytes after the end of the reply")
                return
            if state == _UNTIL_CLOSE:
                self.on_body(data)
                return
            if state == _CHUNK_DATA:
                if len(data) <= self._left:
                    self._left -= len(data)
                    self.on_body(data)
                    if self._left == 0:
                        self._state = _CHUNK_END
                    return
                self.on_body(data[: self._left])
                data = data[self._left :]
                self._left = 0
                self._state = _CHUNK_END
                continue
            if state == _HEAD:
                end, after = _head_end(data)
                if end < 0:
                    if len(data) > MAX_HEAD:
                        raise ProtocolError("reply head too large")
                    self._buffer = data
                    return
                head, data = data[:end], data[after:]
                self._parse_head(head)
                continue
            if state == _CHUNK_SIZE:
                end = data.find(b"\n")
                if end < 0:
                    if len(data) > MAX_CHUNK_LINE:
                        raise ProtocolError("chunk size line too long")
                    self._buffer = data
                    return
                line, data = data[:end].rstrip(b"\r"), data[end + 1 :]
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError("bad chunk size") from None
                if size < 0 or not size_text.isalnum():
                    raise ProtocolError("bad chunk size")
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._left = size
                    self._state = _CHUNK_DATA
                continue
            if state == _CHUNK_END:
                if data[:1] == b"\n":
                    data = data[1:]
                elif len(data) < 2:
                    self._buffer = data
                    return
                elif data[:2] == b"\r\n":
                    data = data[2:]
                else:
                    raise ProtocolError("chunk not followed by CRLF")
                self._state = _CHUNK_SIZE
                continue
            if state == _TRAILERS:
                end = data.find(b"\n")
                if end < 0:
                    if len(data) > MAX_HEAD:
                        raise ProtocolError("trailers too large")
                    self._buffer = data
                    return
                line, data = data[:end].rstrip(b"\r"), data[end + 1 :]
                if not line:  # the empty line that ends the trailer section
                    self._finish()
                    if data:
                        raise ProtocolError("bytes after the end of the reply")
                    return
                continue
            raise ProtocolError("bytes after the end of the reply")

    def feed_eof(self) -> None:
        """The connection closed: that ends a close-delimited body, and is an error otherwise."""
        if self._state == _UNTIL_CLOSE:
            self._finish()
        elif self._state != _DONE:
            raise ProtocolError("connection closed before the reply was complete")

    def _finish(self) -> None:
        self._state = _DONE
        self.on_end()

    def _parse_head(self, head: bytes) -> None:
        lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1."):
            raise ProtocolError("not an HTTP/1.x reply")
        try:
            status = int(status_line[9:12])
        except ValueError:
            raise ProtocolError("bad status line") from None
        if not 100 <= status <= 999 or status_line[8:9] != b" ":
            raise ProtocolError("bad status line")
        reason = status_line[13:MAX_REASON].decode("latin-1")
        self.reason = reason if reason.isprintable() else ""
        headers: Headers = []
        length: int | None = None
        chunked = False
        close = status_line.startswith(b"HTTP/1.0")
        for raw in lines[1:]:
            name, sep, value = raw.partition(b":")
            if not sep or not name or name != name.strip() or name[:1] in b" \t":
                raise ProtocolError("bad header line")
            if _CONTROL.search(raw):
                # A CR, LF or NUL inside a field could not be passed on safely (RFC 9110 5.5).
                raise ProtocolError("control character in a header field")
            text_name = name.decode("latin-1")
            text_value = value.strip(b" \t").decode("latin-1")
            headers.append((text_name, text_value))
            low = text_name.lower()
            if low == "content-length":
                if not (text_value.isascii() and text_value.isdigit()):
                    raise ProtocolError("bad Content-Length")
                new = int(text_value)
                if length is not None and new != length:
                    raise ProtocolError("bad Content-Length")
                length = new
            elif low == "transfer-encoding":
                chunked = text_value.lower().rsplit(",", 1)[-1].strip() == "chunked"
            elif low == "connection":
                tokens = {t.strip().lower() for t in text_value.split(",")}
                if "close" in tokens:
                    close = True
                elif "keep-alive" in tokens:
                    close = False
        if 100 <= status < 200:
            return  # an interim reply (100 Continue): the real one follows
        self.keep_alive = not close
        if status in (204, 304):
            self.length = 0
            self.on_head(status, headers)
            self._finish()
            return
        if length is not None and not chunked:
            self.length = length
        self.on_head(status, headers)
        if chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._left = length
            self._state = _LENGTH
            if length == 0:
                self._finish()
        else:
            self.keep_alive = False
            self._state = _UNTIL_CLOSE
