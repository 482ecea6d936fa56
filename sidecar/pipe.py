"""Upstream reply -> client, byte for byte.

The flush policy lives here: a reply without a known length (SSE streams, chunked bodies) is
written to the client chunk by chunk as it arrives; a reply with a Content-Length is read whole
and sent in one write. Read failures (the upstream's fault) and write failures (the client left)
are told apart: the first aborts the client's connection so a cut stream never looks complete,
the second closes the upstream connection at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from sidecar import errors, sse, stream_usage, usage
from sidecar.deployment import Prices
from sidecar.headers import (
    COST_HEADER,
    DEPLOYMENT_HEADER,
    LITELLM_COST_HEADER,
    STREAM_HEADERS,
    has,
    reply_headers,
)
from sidecar.http.message import Responder
from sidecar.origin import UpstreamError
from sidecar.providers.translate import TextToChat, TextToChatStream
from sidecar.redact import redact_text
from sidecar.sse import SSEError
from sidecar.upstream import Exchange


async def relay(
    reply: Responder,
    exchange: Exchange,
    named: dict[str, str],
    translation: TextToChat | None = None,
    secrets: tuple[str, ...] = (),
    prices: Prices | None = None,
    strip_usage: bool = False,
) -> None:
    """Send the upstream's reply to the client, through `translation` when there is one (error
    replies never are), with our `named` headers added; a stream without the usage chunk the
    sidecar asked for when `strip_usage`. Ends `exchange` in every case."""
    headers, content_type = reply_headers(exchange.headers, named, secrets)
    reason = redact_text(exchange.reason, secrets)
    tee = reply.tee
    if tee is not None:  # the response cache keeps the reply as the client gets it
        tee.content_type = content_type
        if tee.whole and not exchange.keepable:
            tee.parts = None
    deployment_id = named[DEPLOYMENT_HEADER]
    try:
        if exchange.status >= 400:
            # Read whole (errors are small), checked for our keys, never translated.
            body = await read_error(exchange, deployment_id)
            fields, body = errors.clean_error(
                exchange.status, reason, headers, body, deployment_id, secrets
            )
            reply.send(exchange.status, fields, body, reason)
            return
        is_sse = content_type.startswith("text/event-stream")
        if not is_sse and (
            exchange.length is not None
            or translation is not None
            # A chunked JSON reply is read whole too when its cost is to go in the head.
            or (prices is not None and content_type.startswith("application/json"))
        ):
            try:
                body = await exchange.read_all()
            except UpstreamError as exc:
                raise errors.upstream_failure(exc, deployment_id) from None
            if translation is not None:
                body = translation.reply(body)
            if prices is not None and (counted := usage.tokens(body)) is not None:
                # A whole reply is read before its head goes: its cost can go in the head.
                told = f"{prices.cost(*counted):.10g}"
                headers = [h for h in headers if h[0].lower() not in _COST_HEADERS]
                headers += [(COST_HEADER, told), (LITELLM_COST_HEADER, told)]
            reply.send(exchange.status, headers, body, reason)
            return
        if is_sse:
            # Added where the upstream said nothing: its own choice (llama.cpp's server sends
            # Cache-Control: no-store, stricter than ours) is passed on as it came.
            for name, value in STREAM_HEADERS.items():
                if not has(headers, name.lower()):
                    headers.append((name, value))
        reply.start(exchange.status, headers, reason)
        if translation is not None and is_sse:
            events = _Translated(translation.stream(), strip_usage)
            await _translate(reply, exchange, events, deployment_id)
        else:
            await _pipe(reply, exchange, is_sse, strip_usage and is_sse)
        error = exchange.error
        if error is not None and not reply.started:
            # Broken before a byte reached the client (the head waits for the first bytes):
            # a clean 502 or 504 can still be the answer.
            if error.kind == "closed":
                error = UpstreamError("cut", "the reply broke off after its head")
            raise errors.upstream_failure(error, deployment_id)
    finally:
        if not exchange.handed_off:
            exchange.close()  # a no-op for a reply read to its end


async def _pipe(reply: Responder, exchange: Exchange, is_sse: bool, strip_usage: bool) -> None:
    """A stream relayed from the upstream's data callback straight to the client's socket:
    no task step per event. This coroutine only waits for the end, and for a slow client."""
    exchange.pipe(stream_usage.Strip(reply.pipe) if strip_usage else reply.pipe)
    while True:
        try:
            settled = exchange.settled()
            if settled is not None:
                await settled
            if exchange.error is not None:
                if reply.started:
                    reply.abort()  # a cut stream must read as cut: no final chunk
                return
            if exchange.ended:
                return
            if exchange.blocked:
                await reply.drain()
                exchange.unblock()
        except asyncio.CancelledError:
            if not (is_sse and exchange.last.endswith(DONE_EVENTS)):
                raise
            # The client read [DONE] and left before the upstream's end of body came (some
            # clients close at [DONE]): the stream is complete, the connection worth keeping.
            exchange.unpipe()
            _kept_after_done(exchange)
            return


async def _translate(
    reply: Responder, exchange: Exchange, events: _Translated, deployment_id: str
) -> None:
    """A stream turned into another format event by event (chat over a text completion)."""
    done = False  # the client has the stream's last event
    while True:
        try:
            chunk = events.feed(await exchange.next_chunk())
        except UpstreamError:
            if reply.started:
                reply.abort()
            return  # relay() answers 502 or 504 when nothing was sent
        except SSEError:
            if reply.started:
                reply.abort()
                return
            failure = UpstreamError("protocol", "its event stream could not be parsed")
            raise errors.upstream_failure(failure, deployment_id) from None
        except asyncio.CancelledError:
            if not done:
                raise
            _kept_after_done(exchange)
            return
        if not chunk and not exchange.ended:
            continue  # bytes that completed no event yet
        if exchange.ended:
            reply.end(chunk)  # the last bytes and the end of the chunked body in one write
            return
        await reply.write(chunk)
        done = chunk.endswith(DONE_EVENTS)


_COST_HEADERS = (COST_HEADER, LITELLM_COST_HEADER)  # an upstream's own (a LiteLLM's) give way


async def read_error(exchange: Exchange, deployment_id: str) -> bytes:
    """An error reply's body, up to one byte past errors.MAX_ERROR_BODY (which is refused)."""
    try:
        return await exchange.read_all(errors.MAX_ERROR_BODY + 1)
    except UpstreamError as exc:
        raise errors.upstream_failure(exc, deployment_id) from None


# How OpenAI-compatible streams end (the API reference; also vLLM, llama.cpp, LiteLLM).
# How a stream's last event ends: OpenAI's [DONE], and Anthropic's message_stop (its SDK
# closes once it has it).
DONE_EVENTS = (
    b"data: [DONE]\n\n",
    b"data: [DONE]\r\n\r\n",
    b"data:[DONE]\n\n",
    b'{"type":"message_stop"}\n\n',
    b'{"type": "message_stop"}\n\n',
)
FINISH_WITHIN = 2.0  # seconds the rest of a stream's body may take, read for nobody
_finishing: set[asyncio.Task[None]] = set()  # held, so that the loop does not drop them


def _kept_after_done(exchange: Exchange) -> None:
    """The client left after the stream's last event: the request is not cancelled after all
    (it is complete, and logged as such), and the rest of the reply is read for nobody."""
    current = asyncio.current_task()
    if current is not None:
        current.uncancel()
    _finish_later(exchange)


def _finish_later(exchange: Exchange) -> None:
    """Read what is left of a reply nobody waits for, so that its connection returns to the
    pool; closed instead if that takes long. The exchange is ended here, not by relay()."""

    async def finish() -> None:
        try:
            async with asyncio.timeout(FINISH_WITHIN):
                while await exchange.next_chunk():
                    pass
        except (TimeoutError, UpstreamError):
            pass
        finally:
            exchange.close()

    task = asyncio.get_running_loop().create_task(finish())
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    exchange.handed_off = True


class _Translated:
    """Upstream SSE bytes in, translated SSE bytes out, whatever the reads' boundaries."""

    __slots__ = ("parser", "stream", "strip_usage")

    def __init__(self, stream: TextToChatStream, strip_usage: bool) -> None:
        self.parser = sse.Parser()
        self.stream = stream
        self.strip_usage = strip_usage

    def feed(self, chunk: bytes) -> bytes:
        out = b"".join(sse.encode(self.stream.event(data)) for data in self.parser.feed(chunk))
        return stream_usage.without_usage(out) if self.strip_usage else out


async def send_events(reply: Responder, events: Iterable[bytes], headers: dict[str, str]) -> None:
    """A stream the gateway writes itself (mock replies), framed like an upstream's."""
    fields = [("Content-Type", "text/event-stream"), *STREAM_HEADERS.items(), *headers.items()]
    if reply.tee is not None:
        reply.tee.content_type = "text/event-stream"
    reply.start(200, fields)
    for event in events:
        await reply.write(event)
    reply.end()
