"""mock_response: the gateway answers itself, in the exact shape the OpenAI API uses.

Pure functions from (request, text) to the reply bytes: a chat.completion or text_completion
object, or the list of Server-Sent Events a streamed reply is made of.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import orjson

from sidecar.routes import Endpoint

_PIECES = re.compile(r"\S+\s*|\s+")
DONE = b"data: [DONE]\n\n"


def _count_tokens(text: str) -> int:
    """A rough token count (about four characters a token), enough for a usage block."""
    return max(1, (len(text) + 3) // 4) if text else 0


def _prompt_text(body: dict[str, Any], endpoint: Endpoint) -> str:
    if endpoint is Endpoint.CHAT:
        parts = []
        for message in body.get("messages", ()):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return " ".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        return prompt
    # A list of prompts, or of tokens: count each token as a word-sized piece.
    return (
        " ".join(p if isinstance(p, str) else "abcd" for p in prompt)
        if isinstance(prompt, list)
        else ""
    )


def _choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1


def _usage(body: dict[str, Any], endpoint: Endpoint, text: str, n: int) -> dict[str, int]:
    prompt = _count_tokens(_prompt_text(body, endpoint))
    completion = _count_tokens(text) * n
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def reply(body: dict[str, Any], endpoint: Endpoint, model: str, text: str) -> bytes:
    """The whole non-streamed reply."""
    n = _choices(body)
    created = int(time.time())
    if endpoint is Endpoint.CHAT:
        obj: dict[str, Any] = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i in range(n)
            ],
            "usage": _usage(body, endpoint, text, n),
            "system_fingerprint": None,
        }
    else:
        obj = {
            "id": "cmpl-" + secrets.token_hex(12),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"text": text, "index": i, "logprobs": None, "finish_reason": "stop"}
                for i in range(n)
            ],
            "usage": _usage(body, endpoint, text, n),
        }
    return orjson.dumps(obj)


def stream(body: dict[str, Any], endpoint: Endpoint, model: str, text: str) -> Iterator[bytes]:
    """The streamed reply, one SSE event per piece of text, as OpenAI sends it.

    Chat: a first chunk with the role, then content pieces, then one with finish_reason; text
    completion: text pieces, the last with finish_reason. A usage chunk follows when the client
    asked for stream_options.include_usage; `data: [DONE]` ends the stream.
    """
    n = _choices(body)
    created = int(time.time())
    chat = endpoint is Endpoint.CHAT
    head: dict[str, Any] = {
        "id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
    }
    if chat:
        head["system_fingerprint"] = None
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True

    def event(choices: list[dict[str, Any]]) -> bytes:
        chunk = {**head, "choices": choices}
        if include_usage:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def choice(i: int, piece: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if piece is not None:
                delta["content"] = piece
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"text": piece or "", "index": i, "logprobs": None, "finish_reason": finish}

    if chat:
        yield event([choice(i, None, None, role=True) for i in range(n)])
    pieces = _PIECES.findall(text)
    for piece in pieces:
        yield event([choice(i, piece, None) for i in range(n)])
    yield event([choice(i, None if chat else "", "stop") for i in range(n)])
    if include_usage:
        usage_chunk = {**head, "choices": [], "usage": _usage(body, endpoint, text, n)}
        yield b"data: " + orjson.dumps(usage_chunk) + b"\n\n"
    yield DONE
