"""Hostile input: property tests over every parser and translator, and a running sidecar
bombarded with malformed requests, which must answer each with a 4xx OpenAI-shaped error and
keep serving."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import request as requests
from sidecar import sse
from sidecar.errors import GatewayError
from sidecar.http.response_parser import ProtocolError, ResponseParser
from sidecar.providers import translate
from sidecar.routes import Endpoint
from sidecar.sse import SSEError
from sidecar.table import Table
from tests.conftest import MakeSidecar
from tests.fakes import FakeUpstream
from tests.test_gateway import vllm
from tests.test_routes import table


def _dumps(value: Any) -> bytes:
    """The stdlib's JSON: unlike orjson it writes integers of any size, as clients may."""
    return json.dumps(value).encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(_dumps),
    st.dictionaries(
        st.sampled_from(["model", "messages", "stream", "prompt", "input", "n"]),
        json_values,
        max_size=5,
    ).map(_dumps),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(bodies, st.sampled_from([Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS]))
def test_request_parser_accepts_or_says_400(raw: bytes, endpoint: Endpoint) -> None:
    try:
        body = requests.parse(raw, endpoint)
    except GatewayError as exc:
        assert exc.status == 400
        return
    assert isinstance(body["model"], str) and body["model"]
    assert isinstance(requests.upstream_body(body, "m", {"max_tokens": 1}), bytes)


# Integers at and beyond 64 bits' edges, among other values.
edge_integers = st.integers(2**63 - 3, 2**64 + 3) | st.integers(-(2**63) - 3, -(2**63) + 3)
values_with_wide_integers = st.lists(edge_integers | json_values, max_size=4) | edge_integers


@given(values_with_wide_integers)
def test_numbers_arrive_unchanged_or_are_refused(value: Any) -> None:
    """orjson widens integers beyond 64 bits to floats; none may reach an upstream changed."""
    raw = _dumps({"model": "m", "messages": [], "x": value})
    body = requests.parse(raw, Endpoint.CHAT)
    payload = requests.upstream_body(body, "m", {})
    try:
        requests.check_integers(raw, payload)
    except GatewayError as exc:
        assert exc.status == 400 and exc.code == "integer_out_of_range"
        return
    assert json.loads(payload)["x"] == value


TABLE: Table = table(
    ("a", "hosted_vllm/a"), ("openai/*", "hosted_vllm/*"), ("*-x", "hosted_vllm/*")
)


@given(st.text())
def test_table_lookup_never_fails(model: str) -> None:
    found = TABLE.lookup(model)
    if found is not None and found.wildcard is not None:
        assert found.wildcard and found.wildcard in model


messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])},
        optional={"content": json_values, "name": json_values, "tool_calls": json_values},
    ),
    max_size=6,
)


@given(messages)
def test_translators_answer_or_say_400(conversation: list[dict[str, Any]]) -> None:
    for step in (
        translate.fold_system_messages,
        translate.messages_to_prompt,
        lambda m: translate.chat_to_text_request({"model": "m", "messages": m}),
    ):
        try:
            step(conversation)
        except GatewayError as exc:
            assert exc.status == 400


@given(st.binary(max_size=400))
def test_stream_translation_of_any_bytes(data: bytes) -> None:
    parser, stream = sse.Parser(), translate.TextToChatStream()
    try:
        for event in parser.feed(data):
            assert isinstance(stream.event(event), bytes)
    except SSEError:
        pass


@given(
    # Surrogates (category Cs) are no text a stream can carry: str.encode() refuses them.
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")),
        max_size=8,
    ),
    st.data(),
)
def test_sse_survives_any_split(events: list[str], data: st.DataObject) -> None:
    raw = b"".join(sse.encode(e.encode()) for e in events)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    parser, got, start = sse.Parser(), [], 0
    for cut in [*cuts, len(raw)]:
        got += parser.feed(raw[start:cut])
        start = cut
    assert got == [e.encode() for e in events]


@given(st.binary(max_size=400))
def test_reply_parser_says_protocol_error_or_parses(data: bytes) -> None:
    parser = ResponseParser(lambda s, h: None, lambda b: None, lambda: None)
    try:
        parser.feed(data)
        parser.feed_eof()
    except ProtocolError:
        pass


def hostile_requests(rng: random.Random) -> list[bytes]:
    """Requests a sidecar must refuse with a 4xx: broken HTTP, broken JSON, wrong types."""
    bodies = [
        b"{",
        b"[]",
        b'"x"',
        b"null",
        b"\xff\xfe\x00",
        b'{"model": 7}',
        b'{"model": null}',
        b'{"model": ""}',
        b'{"model": "mistral", "messages": "hi"}',
        b'{"model": "mistral", "messages": [1]}',
        b'{"model": "mistral", "stream": "yes", "messages": []}',
        b'{"model": "m\\r\\nX-Evil: 1", "messages": []}',
        b'{"model": "nope", "messages": []}',
        b'{"model": "mistral", "messages": [], "n": 1e400}',
        b"[" * 2000 + b"]" * 2000,
        b'{"model": "\\ud800", "messages": []}',
        b'{"model": "mistral", "prompt": 5}',
    ]
    out = []
    for body in bodies:
        path = rng.choice([b"/v1/chat/completions", b"/chat/completions"])
        if body.endswith(b'"prompt": 5}'):
            path = b"/v1/completions"
        out.append(
            b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (path, len(body), body)
        )
    for _ in range(150):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
        out.append(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(junk), junk)
        )
        out.append(junk + b"\r\n\r\n")  # not even HTTP
        out.append(b"GET /v1/\x00models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out.append(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: -1\r\n\r\n"
        )
        out.append(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        out.append(b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out.append(
            b"GET /v1/unknown HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Bad: a\x01b\r\n\r\n"
        )
    return out


async def test_a_storm_of_malformed_requests(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(vllm(upstream))
    port = sidecar.running.port
    rng = random.Random(20261123)
    attacks = hostile_requests(rng)
    assert len(attacks) > 1000

    async def send(raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(raw)  # every request asks for Connection: close, or is no HTTP at all
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    for start in range(0, len(attacks), 50):
        replies = await asyncio.gather(*(send(a) for a in attacks[start : start + 50]))
        for raw, reply in zip(attacks[start : start + 50], replies, strict=True):
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head[9:12].isdigit(), (raw[:80], reply[:80])
            status = int(head[9:12])
            assert 400 <= status < 500, (raw[:80], head[:60])
            if b"chunked" not in head:
                error = orjson.loads(body)["error"]
                assert set(error) == {"message", "type", "param", "code"}
    assert upstream.received == []  # nothing hostile reached the upstream
    stream = await sidecar.openai().chat.completions.create(
        model="mistral", messages=[{"role": "user", "content": "hi"}]
    )
    assert stream.choices[0].message.content == "Hello from upstream"  # and it still serves
