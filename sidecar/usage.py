"""Token counts from an upstream's `usage`, found in the last bytes of its reply without
parsing the whole of it (OpenAI-style replies end with their usage; a stream's comes last)."""

from __future__ import annotations

import re

_COUNT = re.compile(rb"\s*:\s*(\d{1,12})")
TAIL = 1024  # bytes searched at the end of a reply


def tokens(*pieces: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the reply's last pieces, or None when it has no usage."""
    for piece in reversed(pieces):
        start = max(0, len(piece) - TAIL)
        at = piece.rfind(b'"prompt_tokens"', start)
        if at < 0:
            continue
        prompt = _COUNT.match(piece, at + 15)
        if prompt is None:
            continue
        completion = 0
        at = piece.rfind(b'"completion_tokens"', start)
        if at >= 0 and (found := _COUNT.match(piece, at + 19)) is not None:
            completion = int(found.group(1))
        return int(prompt.group(1)), completion
    return None
