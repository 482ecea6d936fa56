"""Pooled keep-alive HTTP/1.1 connections to upstreams, as plain asyncio protocols.

Measured against aiohttp's client on the benchmark, this pipe costs the proxy far less CPU per
request: the request head is mostly built at load time, a reply is parsed by llhttp (http/response_parser.py), and a
body is handed on as the bytes that arrived, without a copy.

An Exchange is one request and its reply on one connection. The proxy awaits its head, then
either its whole body (when the length is known) or its chunks as they come. A connection goes
back to the pool only once a reply has been read to its end and the upstream keeps it alive.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable, Sequence

from sidecar.http.response_parser import Headers, ProtocolError, ResponseParser
from sidecar.origin import Origin, UpstreamError

KEEPALIVE_SECONDS = 60.0  # an idle pooled connection is closed after this
WATCH_INTERVAL = 0.1  # seconds between checks for silent upstreams: timeouts fire this late at most
MAX_IDLE_PER_ORIGIN = 256  # idle connections kept per upstream; more are closed when released
HIGH_WATER = 256 * 1024  # buffered reply bytes that pause reading from the upstream, until the
# consumer takes them all (next_chunk)
MAX_BODY = 64 * 1024 * 1024  # a reply read whole (not streamed) may be this large at most
STALE_WINDOW = 0.25  # seconds: a pooled connection closed this soon after a send was stale


class Connection(asyncio.Protocol):
    """One keep-alive connection; carries one Exchange at a time."""

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser: ResponseParser | None = None  # made with the first exchange, then reused
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        exchange.data_received(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.exchange is not None:
            self.exchange.connection_lost(exc)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


Sink = Callable[[bytes, bool], bool]  # (body bytes, the end) -> whether to keep reading


class Exchange:
    """One request and its reply. Not reusable."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_collect",
        "_error",
        "_last_read",
        "_loop",
        "_parser",
        "_paused",
        "_sent_at",
        "_sink",
        "_waiter",
        "before_last",
        "conn",
        "ended",
        "first_at",
        "got_bytes",
        "handed_off",
        "headers",
        "last",
        "status",
        "stream_timeout",
        "timeout",
    )

    def __init__(self, conn: Connection, timeout: float, stream_timeout: float | None) -> None:
        self.conn = conn
        self.timeout = timeout  # seconds of silence allowed, before the head and between chunks
        self.stream_timeout = stream_timeout  # once the head is in, when it differs
        self._loop = conn.pool.loop
        parser = conn.parser
        if parser is None:
            parser = conn.parser = ResponseParser(self._on_head, self._on_body, self._on_end)
        else:
            parser.expect(self._on_head, self._on_body, self._on_end)
        self._parser = parser
        self.status = 0
        self.headers: Headers = []
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._collect = False  # read_all: the whole body is wanted, so reading never pauses
        self._sent_at = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None  # where a piped body goes, as it arrives (pipe())
        self._error: UpstreamError | None = None
        self.ended = False
        self.got_bytes = False
        self.handed_off = False  # its end is read by another task (pipe._finish_later)
        self.last = self.before_last = b""  # the last body bytes handed on, for usage counts
        self.first_at = 0.0  # time.perf_counter() when body bytes were first handed on
        self._last_read = self._loop.time()
        conn.pool.watch(self)

    # Protocol side.

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._last_read = self._loop.time()
        try:
            self._parser.feed(data)
        except ProtocolError as exc:
            # Bytes after a complete reply spoil the connection, not the reply: what was
            # parsed up to its end is still handed on.
            self._fail(UpstreamError("protocol", str(exc)))
            self.conn.close()
            if not self.ended:
                return
        if self._sink is not None and (self._chunks or self.ended):
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended:
            return
        try:
            self._parser.feed_eof()  # the end of a body that runs until the close
        except ProtocolError:
            self._fail(UpstreamError("closed", "the upstream closed the connection"))
            return
        if self._sink is not None and self.ended:
            self._flush()

    def _on_head(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        if self.stream_timeout is not None:
            self.timeout = self.stream_timeout
        self._wake()

    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._sink is not None:
            return  # written out once this read is parsed (_flush), all of it in one write
        if self._collect:
            if self._buffered > MAX_BODY:
                self._fail(UpstreamError("protocol", f"reply body over {MAX_BODY} bytes"))
                self.conn.close()
                return
        elif self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self.conn.pause_reading()
        self._wake()

    def _on_end(self) -> None:
        self.ended = True
        self._cancel_deadline()
        conn = self.conn
        conn.exchange = None
        if self._paused:  # a connection goes back to the pool reading
            self._paused = False
            conn.resume_reading()
        if self._parser.keep_alive and not conn.closed:
            conn.pool.release(conn)
        else:
            conn.close()
        self._wake()

    # Piping: the body written to the client from this callback, with no task step per piece.

    def pipe(self, sink: Sink) -> None:
        """From now on the body goes to `sink(data, end)` as it arrives, what came before
        first; `end` is True exactly once, with the last bytes. A sink that returns False (the
        client's buffer is full) pauses reading from the upstream, and wakes the waiter
        (settled()); unblock() resumes it."""
        self._sink = sink
        if self._chunks or self.ended:
            self._flush()

    def _flush(self) -> None:
        sink = self._sink
        assert sink is not None
        chunks = self._chunks
        data = b""
        if chunks:
            data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._buffered = 0
            if not self.first_at:
                self.first_at = time.perf_counter()
            self.before_last, self.last = self.last, data
        if self.ended:
            self._sink = None
            sink(data, True)
        elif not sink(data, False) and not self._paused:
            self._paused = True
            self.conn.pause_reading()
            self._wake()

    @property
    def blocked(self) -> bool:
        """Reading is paused until the client takes what was written (pipe)."""
        return self._paused

    def settled(self) -> asyncio.Future[None] | None:
        """While piping: a future that resolves when the reply has ended, failed or is blocked
        on the client; None when it already has."""
        if self.ended or self._error is not None or self._paused:
            return None
        return self._wait()

    def unblock(self) -> None:
        """Read from the upstream again (it was paused: a slow client, or a full buffer)."""
        if self._paused:
            self._paused = False
            self._last_read = self._loop.time()
            self.conn.resume_reading()

    def unpipe(self) -> None:
        """Back to buffering (next_chunk): the client is gone, the rest is read for nobody."""
        self._sink = None
        self.unblock()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self.ended:
            self._error = error
            self._cancel_deadline()
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def silent_for(self, now: float) -> float:
        """Seconds the upstream has been silent; never while we hold it back ourselves (reading
        paused because the client is slower): that silence is ours, not the upstream's."""
        return 0.0 if self._paused else now - self._last_read

    def expire(self) -> None:
        """Called by the pool's watch when the upstream has been silent too long."""
        self._fail(UpstreamError("timeout", f"no reply for {self.timeout:g}s"))
        self.conn.close()

    def _cancel_deadline(self) -> None:
        self.conn.pool.active.discard(self)

    def _wait(self) -> asyncio.Future[None]:
        """What to await for the next event: a bare future, not a coroutine around one."""
        waiter = self._waiter = self._loop.create_future()
        return waiter

    # Consumer side.

    @property
    def reason(self) -> str:
        """The reply's reason phrase ("Bad Request"), or "" when it gave none."""
        return self._parser.reason

    @property
    def length(self) -> int | None:
        """The body's length, when the reply's head states it."""
        return self._parser.length

    @property
    def keepable(self) -> bool:
        """Whether the response cache may keep the reply: its end can be told from a cut (a
        body that runs until the close cannot), and it is not compressed."""
        parser = self._parser
        return parser.framed and not parser.encoded

    async def head(self) -> None:
        """Wait for the status and headers."""
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def error(self) -> UpstreamError | None:
        """What broke the exchange, if anything did."""
        return self._error

    async def read_all(self, limit: int | None = None) -> bytes:
        """The whole body (up to MAX_BODY), or its first `limit` bytes."""
        self._collect = True
        self.unblock()
        while not self.ended:
            if self._error is not None:
                raise self._error
            if limit is not None and self._buffered >= limit:
                break
            await self._wait()
        chunks = self._chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.last = body
        return body

    async def next_chunk(self) -> bytes:
        """The body bytes that arrived since the last call; b"" at the end."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                self.unblock()
                if not self.first_at:
                    self.first_at = time.perf_counter()
                self.before_last, self.last = self.last, data
                return data
            if self.ended:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()

    def close(self) -> None:
        """Abandon the exchange: its connection is closed unless the reply was read to the end."""
        self._cancel_deadline()
        if not self.ended:
            self.ended = True
            self.conn.exchange = None
            self.conn.close()


class Pool:
    """Idle keep-alive connections per origin, most recently used first."""

    def __init__(self, connect_timeout: float = 10.0) -> None:
        # Kept rather than asked for per request: asyncio.get_running_loop() costs a getpid()
        # system call on every call (its fork check).
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.idle: dict[Origin, list[Connection]] = {}
        # Exchanges waiting on their upstream. One periodic check for all of them costs less
        # than a timer armed and cancelled per request; reads only note the time.
        self.active: set[Exchange] = set()
        self._watcher: asyncio.TimerHandle | None = None
        self._tls: ssl.SSLContext | None = None  # made on first need: loading CAs takes ~50 ms
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    async def request(
        self,
        origin: Origin,
        data: Sequence[bytes | memoryview],
        timeout: float,
        stream_timeout: float | None = None,
    ) -> Exchange:
        """Send one request (its pieces: head lines and body, written as one without joining
        them first); return its Exchange once the reply's head has arrived. A pooled connection
        that turns out stale (closed at once, before any byte of a reply) is replaced
        transparently: the upstream cannot have read the request."""
        while True:
            conn = self._take(origin)
            fresh = conn is None
            if conn is None:
                conn = await self._connect(origin, timeout)
            exchange = Exchange(conn, timeout, stream_timeout)
            conn.exchange = exchange
            assert conn.transport is not None
            conn.transport.writelines(data)
            sent = self.loop.time()
            try:
                await exchange.head()
            except UpstreamError as exc:
                exchange.close()
                # A keep-alive connection the upstream had closed while it sat idle fails at
                # once, before the upstream could have read the request: sending it again on a
                # new connection is safe. A later failure may follow work done: it is not.
                stale = exc.kind == "closed" and not exchange.got_bytes
                if not fresh and stale and self.loop.time() - sent < STALE_WINDOW:
                    continue
                raise
            except BaseException:
                exchange.close()
                raise
            return exchange

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def watch(self, exchange: Exchange) -> None:
        self.active.add(exchange)
        if self._watcher is None:
            self._watcher = self.loop.call_later(WATCH_INTERVAL, self._watch)

    def _watch(self) -> None:
        now = self.loop.time()
        for exchange in [e for e in self.active if e.silent_for(now) >= e.timeout]:
            exchange.expire()
        self._watcher = self.loop.call_later(WATCH_INTERVAL, self._watch) if self.active else None

    def _take(self, origin: Origin) -> Connection | None:
        idle = self.idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, origin: Origin, timeout: float) -> Connection:
        loop = self.loop
        try:
            async with asyncio.timeout(min(self.connect_timeout, timeout)):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=self.tls_context() if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )
        except TimeoutError:
            raise UpstreamError("timeout", "connecting timed out") from None
        except ssl.SSLError as exc:
            raise UpstreamError("tls", type(exc).__name__) from None
        except OSError as exc:
            raise UpstreamError("connect", type(exc).__name__) from None
        return conn

    def release(self, conn: Connection) -> None:
        if self.closed:
            conn.close()
            return
        idle = self.idle.setdefault(conn.origin, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        loop = self.loop
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(KEEPALIVE_SECONDS / 2, self._sweep)

    def forget(self, conn: Connection) -> None:
        idle = self.idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = self.loop
        cutoff = loop.time() - KEEPALIVE_SECONDS
        for idle in list(self.idle.values()):
            for conn in [c for c in idle if c.idle_since < cutoff]:
                conn.close()
        if any(self.idle.values()):
            self._sweeper = loop.call_later(KEEPALIVE_SECONDS / 2, self._sweep)

    async def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        for idle in list(self.idle.values()):
            for conn in list(idle):
                conn.close()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing
