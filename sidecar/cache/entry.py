"""One cached reply, and its bytes as stored on Redis. Pure.

A reply is kept as the body the client received (a stream: its SSE events, as sent), its
content type and when it was made; a stream is replayed event by event, as it came.
"""

from __future__ import annotations

from typing import NamedTuple

_SEP = b"\n"
_EVENT_END = (b"\n\n", b"\r\n\r\n")


class Entry(NamedTuple):
    """A tuple, not a frozen dataclass: one is made for every reply kept, on the request path,
    and a frozen dataclass's __init__ costs several times a tuple's."""

    created: float  # time.time() when the reply was made
    stream: bool
    content_type: str
    body: bytes

    def encode(self) -> bytes:
        head = f"1 {self.created:.3f} {int(self.stream)} {self.content_type}".encode("latin-1")
        return head + _SEP + self.body

    @classmethod
    def decode(cls, data: bytes) -> Entry | None:
        """None for bytes that are not an entry (another version's, or damaged)."""
        head, sep, body = data.partition(_SEP)
        try:
            version, created, stream, content_type = head.decode("latin-1").split(" ", 3)
            if version != "1" or not sep or stream not in ("0", "1"):
                return None
            return cls(float(created), stream == "1", content_type, body)
        except ValueError:
            return None


def events(body: bytes) -> list[bytes]:
    """A stream's body split into its events, each with its blank line, as a live stream's
    events are written (one per write, one chunk each)."""
    out = []
    start = 0
    while start < len(body):
        ends = [(i, len(e)) for e in _EVENT_END if (i := body.find(e, start)) >= 0]
        if not ends:
            out.append(body[start:])
            break
        at, length = min(ends)
        out.append(body[start : at + length])
        start = at + length
    return out


DONE = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n", b"data:[DONE]\n\n")


def finished(stream: bytes) -> bool:
    """A stream worth replaying: it ended as OpenAI-compatible streams end, with [DONE], and
    no event of it is an error (servers report a failure mid-generation so, inside a 200)."""
    if not stream.endswith(DONE):
        return False
    return not any(
        e.removeprefix(b"data:").lstrip().startswith(b'{"error"') for e in events(stream)
    )
