"""Upstream reply -> client, byte for byte.

The flush policy lives here: a reply without a known length (SSE streams, chunked bodies) is
written to the client chunk by chunk as it arrives; a reply with a Content-Length is read whole
and sent in one write. Read failures (the upstream's fault) and write failures (the client left)
are told apart: the first aborts the client's connection so a cut stream never looks complete,
the second closes the upstream connection at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp
from aiohttp import web
from aiohttp.web_request import BaseRequest

from sidecar import errors
from sidecar.headers import STREAM_HEADERS, reply_headers


async def relay(
    request: BaseRequest, upstream: aiohttp.ClientResponse, deployment_id: str
) -> web.StreamResponse:
    """Send the upstream's reply to the client. Closes or releases `upstream` in every case."""
    headers = reply_headers(upstream.headers, deployment_id)
    if upstream.content_length is not None and upstream.content_type != "text/event-stream":
        try:
            body = await upstream.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise errors.upstream_failure(exc, deployment_id) from None
        finally:
            upstream.release()
        return web.Response(status=upstream.status, body=body, headers=headers)
    if upstream.content_type == "text/event-stream":
        headers.update(STREAM_HEADERS)
    out = web.StreamResponse(status=upstream.status, headers=headers)
    complete = False
    try:
        await out.prepare(request)
        content = upstream.content
        while True:
            try:
                chunk = await content.readany()
            except (TimeoutError, aiohttp.ClientError):
                abort(request)
                return out
            if not chunk:
                break
            await out.write(chunk)
        complete = True
        await out.write_eof()
        return out
    finally:
        if complete:
            upstream.release()
        else:
            upstream.close()


async def send_events(
    request: BaseRequest, events: Iterable[bytes], headers: dict[str, str]
) -> web.StreamResponse:
    """A stream the gateway writes itself (mock replies), framed like an upstream's."""
    out = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", **STREAM_HEADERS, **headers}
    )
    await out.prepare(request)
    for event in events:
        await out.write(event)
    await out.write_eof()
    return out


def abort(request: BaseRequest) -> None:
    """End the client's connection without the final chunk, so a cut stream reads as cut."""
    transport = request.transport
    if transport is not None:
        transport.close()
