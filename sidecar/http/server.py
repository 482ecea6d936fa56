"""Our HTTP/1.1 server: an asyncio protocol per connection, llhttp (httptools) parsing.

A connection is a small state machine fed by `data_received`: llhttp's callbacks build each
request, and a complete one is handed to the handler, one at a time and in order (pipelined
requests wait their turn, RFC 9112 9.3.2). The handler runs as a task only because it waits
on an upstream; the protocol itself allocates a Request, a Responder and little else.

What aiohttp's server did for us is done here, each with its limit named below: head limits
(431), the body limit (413, before a byte of the body is read when its length is declared),
Expect: 100-continue, gzip/deflate request bodies, the slow-head and slow-body timeouts
(408), the idle keep-alive timeout, write backpressure, the client leaving (its handler is
cancelled, which closes the upstream call at once), malformed requests and smuggling attempts
(llhttp is strict: one Content-Length, never beside Transfer-Encoding; an OpenAI-shaped 400
that never echoes the bytes), and a graceful drain.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import zlib
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import httptools

from sidecar import errors
from sidecar.http.message import Request, Responder

log = logging.getLogger("sidecar")

Handler = Callable[[Request, Responder], Coroutine[Any, Any, None]]
Limits = Callable[[], tuple[int, float]]  # (max body bytes, 0 = none; body timeout seconds)

MAX_FIELD_BYTES = 8190  # a request target, a header name or value (as nginx's and aiohttp's)
MAX_HEADERS = 128  # header fields
MAX_HEAD_BYTES = 64 * 1024  # a whole request head; llhttp holds a partial field until it ends
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle connection stays open; above common LB idle limits
HEAD_TIMEOUT = 30.0  # seconds a request head may take to arrive, once begun
MAX_PIPELINED = 8  # complete requests queued behind the one in hand: reading pauses at this
MAX_QUEUED = 64  # ... and one read may bring more: past this many, the rest is refused (503)
MAX_QUEUED_BYTES = 8 * 1024 * 1024  # bodies queued behind the one in hand: reading pauses too
WRITE_TIMEOUT = 60.0  # seconds a client may leave a reply unread (nginx's send_timeout)
MAX_DECODED = 64 * 1024 * 1024  # bytes a compressed body may inflate to when no limit is set
OVER_LIMIT_GRACE = 2.0  # seconds a connection past max_connections has to send its request
LINGER = 2.0  # seconds a refused client may go on sending before the connection is closed
SWEEP_INTERVAL = 0.1  # seconds between checks of deadlines: timeouts fire this late at most
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# What the parser is doing on a connection.
_IDLE, _HEAD, _BODY = range(3)


class _Stop(Exception):
    """Draining: a request began after the drain did; it is not read."""


class _Refusal(Exception):
    """A request refused while it is read; the answer goes out in turn, then the connection
    closes (what follows cannot be trusted to be where llhttp stopped)."""

    def __init__(self, failure: errors.GatewayError, why: str) -> None:
        super().__init__(why)
        self.failure = failure
        self.path = ""  # the request's path, when it was read before the refusal


def _answer(path: str, failure: errors.GatewayError) -> errors.Answer:
    return failure.answer()


def _head_too_large() -> _Refusal:
    return _Refusal(errors.head_too_large(MAX_FIELD_BYTES, MAX_HEADERS), "head too large")


class Listener:
    """The connections of one listening address (or several sharing a handler): the protocol
    factory, the deadline sweep, and the drain."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        *,
        max_connections: int = 0,
        over_limit: Handler | None = None,
        answer: Callable[[str, errors.GatewayError], errors.Answer] = _answer,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        # How a refusal of this layer is written, by the request's path (a path's clients may
        # read another error shape than OpenAI's).
        self.answer = answer
        self.limits = limits
        self.max_connections = max_connections
        self.over_limit = over_limit or handler
        self.connections: set[HttpProtocol] = set()
        self.waiting: set[HttpProtocol] = set()  # connections with a deadline
        self.closing = False
        self.servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._gone: asyncio.Event | None = None

    def __call__(self) -> HttpProtocol:
        return HttpProtocol(self)

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on (host, port); the port bound (port 0 picks one)."""
        server = await self.loop.create_server(
            self, host, port, reuse_port=reuse_port or None, backlog=1024
        )
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def listen_on(self, sock: socket.socket) -> None:
        """Serve a socket bound elsewhere (a Unix socket: --uds)."""
        if sock.family == socket.AF_UNIX:
            server = await self.loop.create_unix_server(self, sock=sock, backlog=1024)
        else:
            server = await self.loop.create_server(self, sock=sock, backlog=1024)
        self.servers.append(server)

    def watch(self, conn: HttpProtocol) -> None:
        self.waiting.add(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in [c for c in self.waiting if c.deadline <= now]:
            conn.expire()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep) if self.waiting else None

    def forget(self, conn: HttpProtocol) -> None:
        self.connections.discard(conn)
        self.waiting.discard(conn)
        if self._gone is not None and not self.connections:
            self._gone.set()

    async def close(self, timeout: float) -> None:
        """Stop accepting; let requests in hand (and their streams) finish for up to `timeout`
        seconds while idle connections close; then cut what is left."""
        self.closing = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._gone = asyncio.Event()
            try:
                async with asyncio.timeout(timeout):
                    await self._gone.wait()
            except TimeoutError:
                pass
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self.servers:
            await server.wait_closed()


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.handler = listener.handler
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.request: Request | None = None  # the request being read
        self.pending: collections.deque[Request | _Refusal] = collections.deque()
        self.task: asyncio.Task[None] | None = None  # the handler of the request in hand
        self.reply: Responder | None = None
        self.stage = _IDLE
        self.deadline = 0.0  # the sooner of the two below, for the listener's sweep
        self._phase_deadline = 0.0  # idle, head or body: when this stage has lasted too long
        self.broken = False  # what follows on the connection is not parsed any more
        self._closing = False  # no request after those already read
        self._no_more = False  # draining: a request that begins now is not read
        self.closed = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._read_paused = False
        self._continue_owed = False  # a request waits for 100 Continue before its body
        self._url = b""
        self._fields = 0
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._max_body = 0
        self._body_timeout = 0.0
        self._held: Request | None = None  # a request to Upgrade whose body llhttp skipped
        self._raw_left = 0  # bytes of that body still to come
        self._raised: _Refusal | _Stop | None = None  # what a callback raised (_stop_parsing)
        self._in_trailers = False  # after a chunk's size line, before any of its bytes
        self._queued_bytes = 0  # of the bodies of the requests in `pending`
        self._flushing = False  # closing once what is buffered has gone to the client
        self._backlog = 0  # bytes buffered for the client when its write deadline was set
        self._next_when_drained = False  # a queued request waits for the client to read
        self._write_deadline = 0.0  # when a client that reads nothing is given up on

    # Connection life.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        listener.connections.add(self)
        if listener.closing:
            self.close()
            return
        limit = listener.max_connections
        if limit and len(listener.connections) > limit:
            # Not closed unheard: its one request is answered (health and metrics as ever,
            # anything else 503), then it is closed, or after a short grace if it sends none.
            self.handler = listener.over_limit
            self._closing = True
            self.loop.call_later(OVER_LIMIT_GRACE, self.close)
        self._arm(self.loop.time() + KEEPALIVE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.forget(self)
        if self.task is not None:
            self.task.cancel()  # the client left: the upstream call is closed at once
        self._wake_writer()
        # Nothing read is of use now: let go of it without waiting for the cycle collector
        # (the parser and this protocol refer to each other).
        self.pending.clear()
        self.request = self._held = None
        self._body = []

    def eof_received(self) -> bool:
        # A client that closes its side has gone (as with aiohttp and nginx's default): the
        # connection closes, which cancels its handler and the upstream call with it.
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        self._watch_writes()
        self._arm(self._phase_deadline if self in self.listener.waiting else None)

    def _watch_writes(self) -> None:
        """Start the write deadline: WRITE_TIMEOUT without the client taking any of what is
        buffered for it (nginx's send_timeout: between two successful writes)."""
        self._write_deadline = self.loop.time() + WRITE_TIMEOUT
        self._backlog = self.transport.get_write_buffer_size() if self.transport else 0

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()
        if self._next_when_drained:
            self._next_when_drained = False
            self._next()

    def _wake_writer(self) -> None:
        waiter = self._drained
        if waiter is not None:
            self._drained = None
            if not waiter.done():
                waiter.set_result(None)

    # What the Responder uses.

    @property
    def closing(self) -> bool:
        """The reply being written is the connection's last: no request waits behind it."""
        return self._closing and not self.pending

    def send(self, data: bytes, more: bytes | None = None) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        if more is None:
            transport.write(data)
        else:
            transport.writelines((data, more))

    async def drain(self) -> None:
        """Wait until the client has taken enough of what was written (pause_writing)."""
        if self.write_paused and not self.closed:
            self._drained = self.loop.create_future()
            await self._drained

    def close(self) -> None:
        """Close once what was written has gone (a cut stream stays cut: no final chunk); a
        client that never reads it is dropped after WRITE_TIMEOUT, as a paused one is."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size() and not self.closed:
                self._flushing = True
                self._watch_writes()
                self._arm(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """The drain: the requests already read are answered, one being read is finished,
        none that begins after is read; an idle connection closes now."""
        self._closing = True
        self._no_more = True
        if self.task is None and not self.pending and self.stage == _IDLE:
            self.close()

    # Reading.

    def data_received(self, data: bytes) -> None:
        while data and not self.broken:
            if self._raw_left:
                data = self._read_held_body(data)
                continue
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError:
                raised, self._raised = self._raised, None
                if isinstance(raised, _Refusal):
                    self._refuse(raised)
                elif isinstance(raised, _Stop):
                    self.broken = True  # draining: what follows is not read
                else:
                    raise
                return
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops at a request that asks to Upgrade (h2c from `curl --http2`, a
                # websocket). We never switch protocols (no 101): the request is answered over
                # HTTP/1.1 and the connection goes on in HTTP/1.1, with a fresh parser after
                # the request's body, which llhttp leaves to us (_held).
                self.parser = httptools.HttpRequestParser(self)
                data = data[int(exc.args[0]) if exc.args else len(data) :]
                continue
            except httptools.HttpParserError as exc:
                failure = errors.bad_request("Malformed HTTP request.", code="malformed_request")
                self._refuse(_Refusal(failure, type(exc).__name__))
                return
            if self.stage == _HEAD or (self.stage == _BODY and self._in_trailers):
                # llhttp keeps a partial field until it ends (and grows it by copying): a head,
                # or the trailers after a chunked body, is bounded here.
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse(_head_too_large())
            return

    def on_message_begin(self) -> None:
        if self._no_more:
            self._stop_parsing(_Stop())
        self.request = Request()
        self.stage = _HEAD
        self._url = b""
        self._fields = 0
        self._head_bytes = 0
        self._arm(self.loop.time() + HEAD_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_FIELD_BYTES:
            self._stop_parsing(_head_too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if (
            self._fields > MAX_HEADERS
            or len(name) > MAX_FIELD_BYTES
            or len(value) > MAX_FIELD_BYTES
        ):
            self._stop_parsing(_head_too_large())
        key = name.decode("latin-1").lower()
        # surrogateescape: bytes that are not UTF-8 are kept, as a key must hash, not fail.
        text = value.decode("utf-8", "surrogateescape")
        if self.stage == _BODY:
            return  # a trailer field after a chunked body: never taken for a header
        assert self.request is not None
        headers = self.request.headers
        if key in headers:
            headers[key] += ", " + text
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        request = self.request
        assert request is not None
        parser = self.parser
        request.method = parser.get_method().decode("latin-1")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.target = target = self._url.decode("latin-1")
        if target[:1] != "/" and "://" in target[:8]:
            # The absolute form, which RFC 9112 3.2.2 has servers accept: its path is routed.
            parts = target.split("/", 3)
            target = "/" + parts[3] if len(parts) == 4 else "/"
        request.path = target.partition("?")[0]
        self._max_body, self._body_timeout = self.listener.limits()
        declared = request.headers.get("content-length")
        if declared is not None and self._max_body and int(declared) > self._max_body:
            self._stop_parsing(_Refusal(errors.too_large(self._max_body), "body too large"))
        self.stage = _BODY
        self._body = []
        self._body_size = 0
        self._in_trailers = False
        self._arm(self.loop.time() + self._body_timeout if self._body_timeout else None)
        if parser.should_upgrade() and "transfer-encoding" in request.headers:
            # llhttp skips the body of a request to Upgrade; a chunked one is not read here.
            refused = errors.bad_request(
                "A request that asks to Upgrade cannot have a chunked body here.",
                code="malformed_request",
            )
            self._stop_parsing(_Refusal(refused, "chunked upgrade"))
        if parser.should_upgrade() and declared is not None and int(declared):
            self._held = request  # llhttp skips the body of a request to Upgrade: read it here
            self._raw_left = int(declared)
        if request.headers.get("expect", "").lower() == "100-continue" and request.version != "1.0":
            # RFC 9110 10.1.1: the client waits for it before sending a large body.
            if self.task is None and not self.pending:
                self.send(_CONTINUE)
            else:
                self._continue_owed = True

    def on_chunk_header(self) -> None:
        # Until body bytes follow, what comes may be the last chunk's trailer fields.
        self._in_trailers = True
        self._head_bytes = 0

    def on_body(self, data: bytes) -> None:
        self._in_trailers = False
        self._body_size += len(data)
        if self._max_body and self._body_size > self._max_body:
            self._stop_parsing(_Refusal(errors.too_large(self._max_body), "body too large"))
        self._body.append(data)

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None
        self.request = None
        if request is self._held:
            return  # its body comes after llhttp stops (data_received, _read_held_body)
        self._complete(request)

    def _complete(self, request: Request) -> None:
        self.stage = _IDLE
        self._continue_owed = False  # its body came without it
        body = self._body
        if body:
            request.body = body[0] if len(body) == 1 else b"".join(body)
            self._body = []
            encoding = request.headers.get("content-encoding")
            if encoding is not None:
                request.body = self._decoded(request.body, encoding.strip().lower())
        if self.task is None and not self.pending:
            self._start(request)
            return
        if len(self.pending) >= MAX_QUEUED:
            overloaded = errors.GatewayError(
                503,
                f"More than {MAX_QUEUED} requests were pipelined on one connection; send "
                "fewer at once.",
                errors.UNAVAILABLE,
                "too_many_pipelined",
                headers={"Retry-After": "1"},
            )
            self._stop_parsing(_Refusal(overloaded, "too many pipelined"))
        self.pending.append(request)
        self._queued_bytes += len(request.body)
        full = len(self.pending) >= MAX_PIPELINED or self._queued_bytes >= MAX_QUEUED_BYTES
        if full and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _read_held_body(self, data: bytes) -> bytes:
        """Take the held request's body from `data`; what follows it is returned."""
        take = min(self._raw_left, len(data))
        self._body.append(data[:take])  # within the limit: its declared length was checked
        self._raw_left -= take
        if not self._raw_left:
            request, self._held = self._held, None
            assert request is not None
            try:
                self._complete(request)
            except _Refusal as refusal:
                self._raised = None
                self._refuse(refusal)
                return b""
        return data[take:]

    def _decoded(self, body: bytes, encoding: str) -> bytes:
        """A compressed body, inflated (as aiohttp's server did); its limit applies to what it
        inflates to, so that a small bomb is refused like a large body."""
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "x-gzip", "deflate"):
            unsupported = errors.GatewayError(
                415,
                f"Content-Encoding '{encoding[:40]}' is not supported; send the body "
                "uncompressed, gzip or deflate.",
                code="unsupported_content_encoding",
            )
            self._stop_parsing(_Refusal(unsupported, "unsupported encoding"))
        limit = self._max_body or MAX_DECODED
        wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
        try:
            plain = inflater.decompress(body, limit + 1)
            whole = inflater.eof  # False: cut short
        except zlib.error:
            plain, whole = b"", False  # not that encoding at all
        if len(plain) > limit:
            self._stop_parsing(_Refusal(errors.too_large(limit), "inflated body too large"))
        if not whole:
            bad = errors.bad_request(
                f"The request body is not valid {encoding} data.", code="malformed_body"
            )
            self._stop_parsing(_Refusal(bad, "bad compressed body"))
        return plain

    def _stop_parsing(self, refusal: _Refusal | _Stop) -> NoReturn:
        """Raise from an llhttp callback; kept here too, since httptools reports it only as
        the __context__ of its own error, which an enclosing handler would overwrite."""
        self._raised = refusal
        raise refusal

    # Serving.

    def _start(self, request: Request) -> None:
        if self.stage == _IDLE:
            self._arm(None)  # no deadline of ours while the handler works
        reply = self.reply = Responder(self, request)
        task = self.task = self.loop.create_task(self.handler(request, reply))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.task = None
        reply = self.reply
        assert reply is not None
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                log.error("unhandled error in a request handler", exc_info=exc)
                if not reply.started:
                    reply.send_answer(errors.internal().answer())
        if self.closed:
            return
        if not reply.done or not reply.keep_alive:
            self.close()  # a reply cut short leaves the connection unusable
            return
        self._next()

    def _next(self) -> None:
        """The next request queued, or the idle wait for one. A queued request waits while
        the client has not read the replies before it: a client that pipelines and never
        reads must not fill the write buffer without bound."""
        if self.pending:
            if self.write_paused:
                self._next_when_drained = True
                return
            item = self.pending.popleft()
            if isinstance(item, Request):
                self._queued_bytes -= len(item.body)
            room = len(self.pending) < MAX_PIPELINED and self._queued_bytes < MAX_QUEUED_BYTES
            if self._read_paused and room and self.transport:
                self._read_paused = False
                self.transport.resume_reading()
            if isinstance(item, _Refusal):
                self._answer_refusal(item)
            else:
                self._start(item)
            return
        if self._closing and self.stage == _IDLE:
            self.close()  # (a request half read when the drain began is finished first)
            return
        if self.stage == _IDLE:
            self._arm(self.loop.time() + KEEPALIVE_TIMEOUT)
        elif self._continue_owed:
            self._continue_owed = False
            self.send(_CONTINUE)

    def _refuse(self, refusal: _Refusal) -> None:
        if self.request is not None:
            refusal.path = self.request.path
        self.broken = True
        self._closing = True
        self.request = None
        self.stage = _IDLE
        self._arm(None)
        malformed = refusal.failure.code == "malformed_request"
        log.warning(
            "rejected a %s from %s: %d %s",
            "malformed request" if malformed else "request",
            self._peer(),
            refusal.failure.status,
            refusal,
        )
        if self.task is None and not self.pending:
            self._answer_refusal(refusal)
        else:
            self.pending.append(refusal)

    def _answer_refusal(self, refusal: _Refusal) -> None:
        request = Request()
        request.keep_alive = False
        Responder(self, request).send_answer(self.listener.answer(refusal.path, refusal.failure))
        self._linger()

    def _linger(self) -> None:
        """Close after a refusal without a reset: a client still sending (a body too large,
        a head too long) would otherwise get ECONNRESET in place of our answer, since closing
        with unread bytes resets. So our side is shut, what it goes on sending is read and
        dropped, and the connection closes when it closes its side, or after LINGER (nginx's
        lingering close)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()
        self.loop.call_later(LINGER, self.close)

    def _arm(self, phase: float | None) -> None:
        """Watch for the stage's deadline (None: the stage has none) and, while the client
        leaves a reply unread, for the write deadline; whichever comes first."""
        if phase is not None:
            self._phase_deadline = phase
        if self.write_paused or self._flushing:
            self.deadline = (
                self._write_deadline if phase is None else min(phase, self._write_deadline)
            )
        elif phase is None:
            self.listener.waiting.discard(self)
            return
        else:
            self.deadline = phase
        self.listener.watch(self)

    def expire(self) -> None:
        """The sweep found a deadline passed."""
        now = self.loop.time()
        if (self.write_paused or self._flushing) and now >= self._write_deadline:
            backlog = self.transport.get_write_buffer_size() if self.transport else 0
            if backlog >= self._backlog:
                log.warning(
                    "gave up on %s: it took none of its reply for %.0fs",
                    self._peer(),
                    WRITE_TIMEOUT,
                )
                self.abort()  # close() would wait for it to read what is buffered
                return
            self._watch_writes()  # it reads, slowly: a new deadline from now
        if self._flushing:
            self._arm(None)
            return
        if now < self._phase_deadline:
            self._arm(self._phase_deadline)  # the write deadline was the one looked at
        elif self.stage in (_HEAD, _BODY):
            part = "head" if self.stage == _HEAD else "body"
            late = errors.GatewayError(
                408, f"The request {part} took too long to arrive.", code=f"{part}_timeout"
            )
            self._refuse(_Refusal(late, f"{part} timeout"))
        elif self.task is None and not self.pending:
            # Idle past the keep-alive timeout; abort what a client never read.
            if self.transport is not None and self.transport.get_write_buffer_size():
                self.abort()
            else:
                self.close()
        else:
            self._arm(None)  # the handler works: no stage deadline

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return str(peer or "a local socket")
