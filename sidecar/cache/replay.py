"""A cached reply sent again: whole, or as the stream it was, one chunk per event."""

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
    # Each event its own chunk, as a live stream's are; all of them in one write.
    reply.end_with(events(entry.body))
