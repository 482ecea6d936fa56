"""Token counts from an upstream's `usage`, found in the last bytes of its reply without
parsing the whole of it (OpenAI-style replies end with their usage; a stream's comes last)."""

from __future__ import annotations

import re

_COUNT = re.compile(rb"\s*:\s*(\d{1,12})")
TAIL = 1024  # bytes searched at the end of a reply


# (what the prompt's count is named, what the completion's is): OpenAI's chat, completions and
# embeddings; then the Responses API's and Anthropic's Messages'.
_NAMES = ((b'"prompt_tokens"', b'"completion_tokens"'), (b'"input_tokens"', b'"output_tokens"'))


def tokens(*pieces: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the reply's last pieces, or None when it has no usage."""
    for piece in reversed(pieces):
        start = max(0, len(piece) - TAIL)
        for prompt_name, completion_name in _NAMES:
            at = piece.rfind(prompt_name, start)
            if at < 0:
                continue
            prompt = _COUNT.match(piece, at + len(prompt_name))
            if prompt is None:
                continue
            completion = 0
            at = piece.rfind(completion_name, start)
            if at >= 0 and (found := _COUNT.match(piece, at + len(completion_name))) is not None:
                completion = int(found.group(1))
            return int(prompt.group(1)), completion
        # An Anthropic stream's last events count only its output (its input came first).
        at = piece.rfind(b'"output_tokens"', start)
        if at >= 0 and (found := _COUNT.match(piece, at + 15)) is not None:
            return 0, int(found.group(1))
    return None


def input_tokens(head: bytes) -> int | None:
    """An Anthropic stream's input tokens, from its message_start event at the start."""
    at = head.find(b'"input_tokens"')
    found = _COUNT.match(head, at + 14) if at >= 0 else None
    return int(found.group(1)) if found is not None else None


_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
EDGE = 2048  # bytes of each end of a reply searched for its model


def response_model(*pieces: bytes) -> str | None:
    """The model the upstream says answered: near the start of a reply, or near the end
    (after an embeddings list), and in every chunk of a stream."""
    for piece in reversed(pieces):
        found = _MODEL.search(piece, 0, EDGE) or _MODEL.search(piece, max(0, len(piece) - EDGE))
        if found is not None:
            return found.group(1).decode("utf-8", "replace")
    return None
