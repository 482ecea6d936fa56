"""An upstream's reply, parsed by llhttp (httptools): bytes in, callbacks out, no I/O.

llhttp is strict by default (RFC 9112): one Content-Length, no Content-Length beside
Transfer-Encoding, no control characters in fields, exact chunk framing. The one leniency
allowed is RFC 9112 2.2's: a recipient may accept a bare LF ending a line of the head.
"""

from __future__ import annotations

from collections.abc import Callable

import httptools

MAX_HEAD = 64 * 1024  # bytes of status line and header fields an upstream may send
MAX_FIELDS = 256  # header fields an upstream may send
MAX_REASON = 64  # characters of a reason phrase kept, for error messages

Headers = list[tuple[str, str]]


class ProtocolError(Exception):
    """The upstream sent something that is not HTTP/1.1."""


class ResponseParser:
    """Feed it bytes; it calls on_head(status, headers), on_body(bytes) and on_end(). One
    parser serves every reply of a keep-alive connection (`expect` readies it for the next):
    making llhttp's parser costs more than parsing a reply."""

    __slots__ = (
        "_body",
        "_chunked",
        "_end",
        "_head",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_in_trailers",
        "_interim",
        "_length",
        "_parser",
        "_reason",
        "_state",
        "encoded",
        "framed",
        "keep_alive",
        "length",
        "reason",
    )

    def __init__(
        self,
        on_head: Callable[[int, Headers], None],
        on_body: Callable[[bytes], None],
        on_end: Callable[[], None],
    ) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.expect(on_head, on_body, on_end)

    def expect(
        self,
        on_head: Callable[[int, Headers], None],
        on_body: Callable[[bytes], None],
        on_end: Callable[[], None],
    ) -> None:
        """Ready for the next reply on the connection, with its callbacks."""
        self._head = on_head
        self._body = on_body
        self._end = on_end
        self._headers: Headers = []
        self._length: int | None = None
        self._chunked = False
        self._reason = b""
        self._in_head = True  # until the head of the (final) reply is complete
        self._in_trailers = False  # after a chunk's size line, before any of its bytes
        self._head_bytes = 0
        self._interim = False  # parsing a 1xx reply, which the real one follows
        self._state = _HEAD
        self.keep_alive = True  # False once the reply says the connection is not reusable
        self.length: int | None = None  # the body's length, when the head states it
        # The body's end can be told from a cut (a length, or chunked): not when it runs until
        # the connection closes.
        self.framed = True
        self.encoded = False  # a Content-Encoding other than identity
        self.reason = ""  # the status line's reason phrase, for error messages

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> None:
        if self._state == _DONE:
            raise ProtocolError("bytes after the end of the reply")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            raise cause if isinstance(cause, ProtocolError) else ProtocolError(str(exc)) from None
        except httptools.HttpParserError as exc:
            raise ProtocolError(str(exc) or type(exc).__name__) from None
        except httptools.HttpParserUpgrade:  # 101 Switching Protocols: we never ask for one
            raise ProtocolError("the upstream switched protocols") from None
        if self._in_head or self._in_trailers:
            # llhttp keeps a partial field until it is complete (and grows it by copying):
            # bound what a head, or the trailers after a chunked body, may hold.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                raise ProtocolError("reply head or trailers too large")

    def feed_eof(self) -> None:
        """The connection closed: that ends a close-delimited body, and is an error otherwise."""
        if self._state == _UNTIL_CLOSE:
            self._finish()
        elif self._state != _DONE:
            raise ProtocolError("connection closed before the reply was complete")

    def _finish(self) -> None:
        self._state = _DONE
        end = self._end
        # An idle pooled connection keeps its parser: it must not keep the last reply too.
        self._head, self._body, self._end = _no_head, _no_body, _no_end
        end()

    # llhttp's callbacks.

    def on_message_begin(self) -> None:
        if self._state == _DONE:
            raise ProtocolError("bytes after the end of the reply")
        self._headers = []
        self._reason = b""
        self._length = None
        self._chunked = False
        self.framed = True
        self.encoded = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field (after a chunked body): never relayed as a header
        if len(self._headers) >= MAX_FIELDS:
            raise ProtocolError(f"more than {MAX_FIELDS} header fields")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if len(name) in _FRAMING_LENGTHS:
            low = name.lower()
            if low == b"content-length":
                self._length = int(value)  # llhttp checked it: digits, and only one
            elif low == b"transfer-encoding":
                # Chunked when that is the last coding; else the body runs until the close.
                self._chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif low == b"content-encoding":
                self.encoded |= value.strip().lower() not in (b"", b"identity")

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            self._interim = True  # 100 Continue and the like: the real reply follows
            return
        reason = self._reason[:MAX_REASON].decode("latin-1")
        self.reason = reason if reason.isprintable() else ""
        self._in_head = False
        self.keep_alive = parser.should_keep_alive()
        length = self._length
        chunked = self._chunked
        if status in (204, 304):
            length, chunked = 0, False
        if chunked:
            self._state = _BODY
        elif length is not None:
            self.length = length
            self._state = _BODY
        else:
            self.keep_alive = False
            self.framed = False
            self._state = _UNTIL_CLOSE
        self._head(status, self._headers)

    def on_chunk_header(self) -> None:
        # Until body bytes follow, what comes may be the last chunk's trailer fields.
        self._in_trailers = True
        self._head_bytes = 0

    def on_body(self, data: bytes) -> None:
        self._in_trailers = False
        self._body(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._state != _DONE:
            self._finish()


def _no_head(status: int, headers: Headers) -> None:
    pass


def _no_body(data: bytes) -> None:
    pass


def _no_end() -> None:
    pass


# The lengths of the names looked at (content-encoding: for the response cache).
_FRAMING_LENGTHS = frozenset(
    {len(b"content-length"), len(b"transfer-encoding"), len(b"content-encoding")}
)

# Parser states.
_HEAD, _BODY, _UNTIL_CLOSE, _DONE = range(4)
