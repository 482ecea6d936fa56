"""A cached reply sent again: whole, or as the stream it was, one event per write."""

from __future__ import annotations

from sidecar.cache.entry import Entry, events
from sidecar.headers import STREAM_HEADERS
from sidecar.http.message import Fields, Responder


async def replay(reply: Responder, entry: Entry, fields: Fields) -> None:
    head = [("Content-Type", entry.content_type), *fields]
    if not entry.stream:
        reply.send(200, head, entry.body)
        return
    reply.start(200, [*head, *STREAM_HEADERS.items()])
    parts = events(entry.body)
    last = parts.pop() if parts else b""
    for event in parts:
        await reply.write(event)
    reply.end(last)  # the last event and the end in one write, as a live stream ends
