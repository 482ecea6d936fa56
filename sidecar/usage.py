"""Token counts from an upstream's `usage`, found in the last bytes of its reply without
parsing the whole of it (OpenAI-style replies end with their usage; a stream's comes last)."""

from __future__ import annotations

import re

_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,12})')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d{1,12})')
TAIL = 2048  # bytes searched at the end of a reply


def tokens(*pieces: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the reply's last pieces, or None when it has no usage."""
    for piece in reversed(pieces):
        tail = piece[-TAIL:]
        prompt = _PROMPT.search(tail)
        if prompt is not None:
            completion = _COMPLETION.search(tail)
            return int(prompt.group(1)), int(completion.group(1)) if completion else 0
    return None
