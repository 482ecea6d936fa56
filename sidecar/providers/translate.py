"""Pure translations between what clients send and what some upstreams take.

- Chat over a text-completion upstream: messages become one prompt, chat parameters become
  completion parameters, and the reply (or each stream chunk) becomes chat again.
- System messages folded into user messages, for models that reject the system role.

No I/O here: dicts and bytes in, dicts and bytes out.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from sidecar import errors

SYSTEM_ROLES = ("system", "developer")
FOLD_SEPARATOR = "\n\n"

# Chat parameters that a text-completion endpoint does not take: dropped, because OpenAI's
# /completions rejects them. Parameters both take pass as they are, and so do the unknown ones
# (vLLM's extras). logprobs differ in meaning (a flag in chat, a count in completions) and in
# their reply's shape, so they are dropped too rather than mistranslated.
CHAT_ONLY = frozenset(
    {
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "response_format",
        "modalities",
        "audio",
        "prediction",
        "store",
        "metadata",
        "service_tier",
        "reasoning_effort",
        "web_search_options",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
        "logprobs",
        "top_logprobs",
        "max_completion_tokens",
    }
)


def text_of(content: Any, where: str) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise errors.bad_request(
                    f"This model takes text only; {where} holds a '{kind}' part.", "messages"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise errors.bad_request(f"A text part of {where} has no text.", "messages")
            texts.append(text)
        return "\n".join(texts)
    raise errors.bad_request(
        f"The content of {where} must be a string or a list of parts.", "messages"
    )


def messages_to_prompt(messages: list[dict[str, Any]]) -> str:
    """The conversation as one prompt, every message's role and text kept:

        system: You are terse.

        user: Hi

        assistant:

    Each message is `<role>: <text>` (`<role> (<name>): ` when it has a name), messages are
    separated by a blank line, and the prompt ends with `assistant:` so the model answers as
    the assistant. An assistant message's tool calls are written as their JSON.
    """
    lines = []
    for i, message in enumerate(messages):
        role = str(message.get("role", "user"))
        name = message.get("name")
        label = f"{role} ({name})" if isinstance(name, str) and name else role
        text = text_of(message.get("content"), f"messages[{i}]")
        calls = message.get("tool_calls")
        if calls:
            text = (text + "\n" if text else "") + _json(calls)
        lines.append(f"{label}: {text}")
    lines.append("assistant:")
    return "\n\n".join(lines)


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson cannot write (integers past 64 bits)
        return json.dumps(value, default=str)


def chat_to_text_request(body: dict[str, Any]) -> dict[str, Any]:
    """A /chat/completions body as a /completions body."""
    out = {k: v for k, v in body.items() if k not in CHAT_ONLY}
    out["prompt"] = messages_to_prompt(body["messages"])
    limit = body.get("max_completion_tokens")
    if limit is not None and "max_tokens" not in out:
        out["max_tokens"] = limit
    return out


def _chat_id(text_id: Any) -> Any:
    if isinstance(text_id, str) and text_id.startswith("cmpl-"):
        return "chatcmpl-" + text_id[len("cmpl-") :]
    return text_id


def text_to_chat_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A text_completion object as a chat.completion object."""
    choices = []
    for choice in reply.get("choices") or ():
        choices.append(
            {
                "index": choice.get("index", 0),
                "message": {"role": "assistant", "content": choice.get("text", "")},
                "logprobs": None,
                "finish_reason": choice.get("finish_reason"),
            }
        )
    return _envelope(reply, "chat.completion", choices)


def _envelope(source: dict[str, Any], kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    """A chat object around `choices`, with the text completion's id, time, model and usage."""
    out: dict[str, Any] = {
        "id": _chat_id(source.get("id")),
        "object": kind,
        "created": source.get("created"),
        "model": source.get("model"),
        "choices": choices,
    }
    for key in ("usage", "system_fingerprint"):
        if key in source:
            out[key] = source[key]
    return out


class TextToChatStream:
    """Turns each text_completion stream chunk into a chat.completion.chunk. The first chunk of
    each choice carries the assistant role, as OpenAI's chat streams do."""

    __slots__ = ("_started",)

    def __init__(self) -> None:
        self._started: set[int] = set()

    def event(self, data: bytes) -> bytes:
        """The translated data of one event; `[DONE]` and anything not a JSON object pass."""
        if data == b"[DONE]":
            return data
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        if not isinstance(chunk, dict):
            return data
        if "error" in chunk:
            return data
        try:
            return self._translate(chunk)
        except (AttributeError, TypeError, ValueError):
            return data  # not the shape of a text completion chunk: passed on as it came

    def _translate(self, chunk: dict[str, Any]) -> bytes:
        choices = []
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            delta: dict[str, Any] = {}
            if index not in self._started:
                self._started.add(index)
                delta["role"] = "assistant"
            text = choice.get("text")
            finish = choice.get("finish_reason")
            if text or "role" in delta or finish is None:
                delta["content"] = text or ""
            choices.append(
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            )
        return orjson.dumps(_envelope(chunk, "chat.completion.chunk", choices))


def fold_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System and developer messages folded into the next user message — or, when no user
    message follows, into the last one or a new one — so the result holds no system role and no
    two user messages in a row that the input did not have. The input is not changed."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role in SYSTEM_ROLES:
            text = text_of(message.get("content"), f"messages[{i}]")
            if text:
                pending.append(text)
            continue
        if role == "user" and pending:
            message = _prepend(message, FOLD_SEPARATOR.join(pending))
            pending = []
        out.append(message)
    if pending:
        text = FOLD_SEPARATOR.join(pending)
        if out and out[-1].get("role") == "user":
            out[-1] = _append(out[-1], text)
        else:
            out.append({"role": "user", "content": text})
    return out


def _prepend(message: dict[str, Any], text: str) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        return {**message, "content": [{"type": "text", "text": text}, *content]}
    own = content if isinstance(content, str) else ""
    return {**message, "content": text + FOLD_SEPARATOR + own if own else text}


def _append(message: dict[str, Any], text: str) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        return {**message, "content": [*content, {"type": "text", "text": text}]}
    own = content if isinstance(content, str) else ""
    return {**message, "content": own + FOLD_SEPARATOR + text if own else text}


class TextToChat:
    """The reply half of chat over text completion, as the pipe applies it."""

    def reply(self, body: bytes) -> bytes:
        """A whole text_completion reply as chat.completion; anything else passes unchanged."""
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if not isinstance(obj, dict) or "choices" not in obj:
            return body
        try:
            return orjson.dumps(text_to_chat_reply(obj))
        except (AttributeError, TypeError, ValueError):
            return body  # not the shape of a text completion: passed on as it came

    def stream(self) -> TextToChatStream:
        return TextToChatStream()
