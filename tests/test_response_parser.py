"""The upstream reply parser (llhttp): pure, bytes in and events out, tested at every split point."""

from __future__ import annotations

import pytest

from sidecar.http.response_parser import ProtocolError, ResponseParser


class Events:
    def __init__(self) -> None:
        self.heads: list[tuple[int, list[tuple[str, str]]]] = []
        self.body = b""
        self.ends = 0
        self.parser = ResponseParser(self.head, self.on_body, self.end)

    def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.heads.append((status, headers))

    def on_body(self, data: bytes) -> None:
        assert data, "no empty body events"
        self.body += data

    def end(self) -> None:
        self.ends += 1


SSE = b'data: {"a": 1}\n\ndata: [DONE]\n\n'
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'e\r\ndata: {"a": 1}\r\n'
    b"2\r\n\n\n\r\n"
    b"E;ext=1\r\ndata: [DONE]\n\n\r\n"
    b"0\r\nX-Trailer: t\r\n\r\n"
)
LENGTH = (
    b'HTTP/1.1 429 Too Many Requests\r\nContent-Length: 11\r\nRetry-After: 7\r\n\r\n{"e": "rl"}'
)
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH


@pytest.mark.parametrize(
    ("reply", "status", "body", "keep_alive"),
    [
        (CHUNKED, 200, SSE, True),
        (LENGTH, 429, b'{"e": "rl"}', True),
        (INTERIM, 429, b'{"e": "rl"}', True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 200, b"", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", False),
        # Bare LF line endings, which RFC 9112 2.2 lets a recipient accept.
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 200, b"ok", True),
    ],
)
def test_every_split_point(reply: bytes, status: int, body: bytes, keep_alive: bool) -> None:
    for cut in range(len(reply) + 1):
        for second in (cut, min(len(reply), cut + 1), min(len(reply), cut + 7)):
            events = Events()
            for piece in (reply[:cut], reply[cut:second], reply[second:]):
                if piece:
                    events.parser.feed(piece)
            assert [h[0] for h in events.heads] == [status], cut
            assert events.body == body, cut
            assert events.ends == 1, cut
            assert events.parser.keep_alive is keep_alive


def test_bare_lf_in_chunk_framing_is_refused() -> None:
    """llhttp accepts a bare LF ending a head line (lenient, as RFC 9112 2.2 allows) but not in
    the chunk framing, where no server we know sends one: it is a protocol error, never a
    guess at where a chunk ends."""
    events = Events()
    with pytest.raises(ProtocolError):
        events.parser.feed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n0\n\n")


def test_byte_at_a_time() -> None:
    events = Events()
    for i in range(len(CHUNKED)):
        events.parser.feed(CHUNKED[i : i + 1])
    assert events.body == SSE and events.ends == 1
    assert ("Content-Type", "text/event-stream") in events.heads[0][1]


def test_body_until_close() -> None:
    events = Events()
    events.parser.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome")
    events.parser.feed(b" text")
    assert events.ends == 0 and events.parser.length is None
    events.parser.feed_eof()
    assert events.body == b"some text" and events.ends == 1
    assert events.parser.keep_alive is False


def test_length_is_reported() -> None:
    events = Events()
    events.parser.feed(LENGTH[: LENGTH.index(b"\r\n\r\n") + 4])
    assert events.parser.length == 11


@pytest.mark.parametrize(
    "reply",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n name: v\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Evil: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Evil: a\x00b\r\n\r\n",
    ],
)
def test_not_http(reply: bytes) -> None:
    events = Events()
    with pytest.raises(ProtocolError):
        events.parser.feed(reply)


def test_cut_reply_is_an_error_at_eof() -> None:
    events = Events()
    events.parser.feed(CHUNKED[:100])
    with pytest.raises(ProtocolError):
        events.parser.feed_eof()


def test_head_size_is_bounded() -> None:
    events = Events()
    with pytest.raises(ProtocolError):
        events.parser.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000)
