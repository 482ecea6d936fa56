"""Pure translations and the SSE parser, tested with golden inputs and outputs."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from sidecar import sse
from sidecar.errors import GatewayError
from sidecar.providers import translate


def test_prompt_keeps_every_role_and_text() -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {
            "role": "user",
            "name": "ann",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "content": "42"},
        {"role": "developer", "content": "Answer in French."},
    ]
    assert translate.messages_to_prompt(messages) == (
        "system: Be terse.\n\n"
        "user (ann): Hi\nthere\n\n"
        'assistant: [{"id":"c1","type":"function"}]\n\n'
        "tool: 42\n\n"
        "developer: Answer in French.\n\n"
        "assistant:"
    )


def test_prompt_refuses_images() -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(GatewayError) as caught:
        translate.messages_to_prompt(messages)
    assert caught.value.status == 400 and "image_url" in caught.value.message


def test_chat_request_becomes_a_completion_request() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 9,
        "temperature": 0.5,
        "n": 2,
        "stop": ["\n"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [{"type": "function"}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_logprobs": 2,
        "top_k": 40,
    }
    assert translate.chat_to_text_request(body) == {
        "model": "m",
        "prompt": "user: Hi\n\nassistant:",
        "max_tokens": 9,
        "temperature": 0.5,
        "n": 2,
        "stop": ["\n"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "top_k": 40,
    }
    assert translate.chat_to_text_request({**body, "max_tokens": 3})["max_tokens"] == 3


def test_completion_reply_becomes_chat() -> None:
    reply = {
        "id": "cmpl-9",
        "object": "text_completion",
        "created": 7,
        "model": "up",
        "system_fingerprint": "fp",
        "choices": [
            {"text": "A", "index": 0, "logprobs": None, "finish_reason": "stop"},
            {"text": "B", "index": 1, "logprobs": None, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    assert translate.text_to_chat_reply(reply) == {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 7,
        "model": "up",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A"},
                "logprobs": None,
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "B"},
                "logprobs": None,
                "finish_reason": "length",
            },
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        "system_fingerprint": "fp",
    }


def chunk(text: str | None, index: int = 0, finish: str | None = None, **extra: Any) -> bytes:
    head = {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "up"}
    choices = (
        []
        if text is None
        else [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}]
    )
    return orjson.dumps({**head, "choices": choices, **extra})


RECORDED = [
    chunk("Once", 0),
    chunk("Un", 1),
    chunk(" upon", 0),
    chunk("", 1, "stop"),
    chunk(" a time", 0, "length"),
    chunk(None, usage={"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}),
    b"[DONE]",
]
EXPECTED = [
    {"index": 0, "delta": {"role": "assistant", "content": "Once"}, "finish_reason": None},
    {"index": 1, "delta": {"role": "assistant", "content": "Un"}, "finish_reason": None},
    {"index": 0, "delta": {"content": " upon"}, "finish_reason": None},
    {"index": 1, "delta": {}, "finish_reason": "stop"},
    {"index": 0, "delta": {"content": " a time"}, "finish_reason": "length"},
]


def check_translated(events: list[bytes]) -> None:
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}
    got = [
        {k: c["choices"][0][k] for k in ("index", "delta", "finish_reason")} for c in chunks[:-1]
    ]
    assert got == EXPECTED
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 6


def test_stream_chunks_become_chat_chunks() -> None:
    stream = translate.TextToChatStream()
    check_translated([stream.event(e) for e in RECORDED])


def test_stream_translation_at_every_split_point() -> None:
    # A recorded stream with every line ending SSE allows, a comment and a two-line event.
    raw = b": keep-alive\r\n\r\n"
    endings = [b"\n\n", b"\r\n\r\n", b"\r\r"]
    for i, data in enumerate(RECORDED):
        raw += b"data: " + data + endings[i % 3]
    for cut in range(len(raw) + 1):
        for second in (cut, min(len(raw), cut + 1), min(len(raw), cut + 13)):
            parser, stream = sse.Parser(), translate.TextToChatStream()
            events: list[bytes] = []
            for piece in (raw[:cut], raw[cut:second], raw[second:]):
                if piece:
                    events += [stream.event(d) for d in parser.feed(piece)]
            check_translated(events)


def test_sse_fields() -> None:
    parser = sse.Parser()
    assert parser.feed(b"event: x\nid: 1\ndata: a\ndata:b\n: note\n\ndata: c") == [b"a\nb"]
    assert parser.feed(b"\n\n") == [b"c"]
    assert parser.feed(b"\n\n\n") == []  # blank lines alone dispatch nothing


TEXT = [{"type": "text", "text": "Q"}]


@pytest.mark.parametrize(
    ("messages", "folded"),
    [
        ([{"role": "user", "content": "Q"}], [{"role": "user", "content": "Q"}]),
        (
            [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
            [{"role": "user", "content": "S\n\nQ"}],
        ),
        (
            [
                {"role": "system", "content": "S1"},
                {"role": "developer", "content": "S2"},
                {"role": "user", "content": "Q"},
            ],
            [{"role": "user", "content": "S1\n\nS2\n\nQ"}],
        ),
        (
            [
                {"role": "system", "content": [{"type": "text", "text": "S"}]},
                {"role": "user", "content": TEXT},
            ],
            [{"role": "user", "content": [{"type": "text", "text": "S"}, *TEXT]}],
        ),
        (
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
                {"role": "system", "content": "S"},
            ],
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
                {"role": "user", "content": "S"},
            ],
        ),
        (
            [{"role": "user", "content": "Q"}, {"role": "system", "content": "S"}],
            [{"role": "user", "content": "Q\n\nS"}],
        ),
        (
            [{"role": "user", "content": TEXT}, {"role": "system", "content": "S"}],
            [{"role": "user", "content": [*TEXT, {"type": "text", "text": "S"}]}],
        ),
        (
            [
                {"role": "system", "content": "S"},
                {"role": "assistant", "content": "A"},
                {"role": "user", "content": "Q"},
            ],
            [{"role": "assistant", "content": "A"}, {"role": "user", "content": "S\n\nQ"}],
        ),
        ([{"role": "system", "content": "S"}], [{"role": "user", "content": "S"}]),
        ([], []),
    ],
)
def test_fold_system_messages(messages: list[dict[str, Any]], folded: list[dict[str, Any]]) -> None:
    before = orjson.dumps(messages)
    assert translate.fold_system_messages(messages) == folded
    assert orjson.dumps(messages) == before  # the input is not changed
    roles = [m["role"] for m in folded]
    assert "system" not in roles and "developer" not in roles
    assert all(not (a == b == "user") for a, b in itertools.pairwise(roles))
