"""The rest of the OpenAI-compatible surface, end to end: Responses (with the official openai
SDK), Messages (with Anthropic's own SDK), rerank, audio forms, tokenize; each checked for what
the client got and for what the upstream received."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import os
import warnings
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web

from tests.conftest import MakeSidecar, Sidecar
from tests.fakes import (
    FakeUpstream,
    RawUpstream,
    Received,
    held_after_first,
    message_events,
    named_event,
    sse,
)
from tests.redis_server import RedisServer

KEY = "sk-surface-test-key"
LIMIT = 5.0  # seconds a step may take before the test fails instead of hanging


def table(*upstreams: FakeUpstream, extra: str = "", name: str = "m") -> str:
    deployments = "".join(
        f"""
  - model_name: {name}
    litellm_params:
      model: hosted_vllm/served-{i}
      api_base: {u.base}
    model_info:
      id: dep-{i}
"""
        for i, u in enumerate(upstreams)
    )
    return f"model_list:{deployments}general_settings:\n  master_key: {KEY}\n{extra}"


def calls(upstream: FakeUpstream, path: str) -> list[Received]:
    return [r for r in upstream.received if r.path == path]


async def test_responses_with_the_openai_sdk(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream))
    client = sidecar.openai(KEY)
    made = await client.responses.create(model="m", input="Say hello.")
    assert made.output_text == "Hello from upstream"
    assert made.usage is not None and made.usage.output_tokens == 3
    (got,) = calls(upstream, "/v1/responses")
    assert got.json() == {"model": "served-0", "input": "Say hello."}
    assert got.headers["Content-Type"] == "application/json"


async def test_streamed_responses_event_by_event(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    client_saw_first = asyncio.Event()
    first = named_event(
        "response.created", {"type": "response.created", "response": {"id": "resp_1"}}
    )
    rest = [
        named_event(
            "response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}
        ),
        named_event(
            "response.completed", {"type": "response.completed", "response": {"id": "resp_1"}}
        ),
    ]

    upstream.scripts["/v1/responses"] = held_after_first([first, *rest], client_saw_first, LIMIT)
    sidecar = await make_sidecar(table(upstream))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/responses",
            json={"model": "m", "input": "hi", "stream": True},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r,
    ):
        assert r.headers["Content-Type"] == "text/event-stream"
        seen = await asyncio.wait_for(r.content.readuntil(b"\n\n"), LIMIT)
        assert seen == first
        client_saw_first.set()
        assert await asyncio.wait_for(r.read(), LIMIT) == b"".join(rest)


async def test_streamed_responses_with_the_sdk(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream))
    stream = await sidecar.openai(KEY).responses.create(model="m", input="hi", stream=True)
    kinds, text = [], ""
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert kinds == ["response.created"] + ["response.output_text.delta"] * 3 + [
        "response.completed"
    ]
    assert text == "Hello from upstream"
    assert calls(upstream, "/v1/responses")[0].json()["stream"] is True


async def test_previous_response_id_goes_where_the_response_was_made(
    make_sidecar: MakeSidecar,
) -> None:
    upstreams = [await FakeUpstream().start() for _ in range(3)]
    try:
        sidecar = await make_sidecar(table(*upstreams))
        client = sidecar.openai(KEY)
        for _ in range(4):  # conversations, each started wherever the router chooses
            made = await client.responses.create(model="m", input="first")
            maker = next(u for u in upstreams if made.id.startswith(f"resp_{u.port}_"))
            for _ in range(5):
                made = await client.responses.create(
                    model="m", input="more", previous_response_id=made.id
                )
                assert made.id.startswith(f"resp_{maker.port}_")  # made by the same one again
                assert calls(maker, "/v1/responses")[-1].json()["previous_response_id"]
            # Streamed, the id is read from the stream's first event.
            stream = await client.responses.create(
                model="m", input="streamed", previous_response_id=made.id, stream=True
            )
            async for event in stream:
                if event.type == "response.completed":
                    made = event.response
            assert made.id.startswith(f"resp_{maker.port}_")
            followed = await client.responses.create(
                model="m", input="after the stream", previous_response_id=made.id
            )
            assert followed.id.startswith(f"resp_{maker.port}_")
        # An id it never made is routed as any request.
        assert (
            await client.responses.create(model="m", input="x", previous_response_id="resp_unknown")
        ).id
    finally:
        for u in upstreams:
            await u.stop()


async def test_another_replica_knows_the_response_on_redis(
    redis: RedisServer, make_sidecar: MakeSidecar
) -> None:
    upstreams = [await FakeUpstream().start() for _ in range(3)]
    shared = f"router_settings:\n  redis_host: 127.0.0.1\n  redis_port: {redis.port}\n"
    try:
        one = await make_sidecar(table(*upstreams, extra=shared))
        other = await make_sidecar(table(*upstreams, extra=shared))
        for _ in range(4):
            made = await one.openai(KEY).responses.create(model="m", input="first")
            maker = next(u for u in upstreams if made.id.startswith(f"resp_{u.port}_"))
            await asyncio.sleep(0.2)  # stored on Redis in the background
            for _ in range(3):
                followed = await other.openai(KEY).responses.create(
                    model="m", input="more", previous_response_id=made.id
                )
                assert followed.id.startswith(f"resp_{maker.port}_")
    finally:
        for u in upstreams:
            await u.stop()


def claude(sidecar: Sidecar, key: str = KEY) -> anthropic.AsyncAnthropic:
    """Anthropic's SDK pointed at the sidecar, as Claude Code is: its key sent as x-api-key."""
    return anthropic.AsyncAnthropic(base_url=sidecar.url, api_key=key, max_retries=0)


async def test_messages_with_anthropics_sdk(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with claude(sidecar) as client:
        message = await client.messages.create(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "Say hello."}]
        )
        assert (
            message.content[0].type == "text" and message.content[0].text == "Hello from upstream"
        )
        assert message.usage.output_tokens == 3
        (got,) = calls(upstream, "/v1/messages")
        assert got.json() == {
            "model": "served-0",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hello."}],
        }
        assert "x-api-key" not in got.headers  # the client's key is the gateway's, not passed on
        sent = client.default_headers["anthropic-version"]
        assert got.headers["anthropic-version"] == sent  # what the SDK sent, passed on
        async with client.messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
        assert text == "Hello from upstream"
        counted = await client.messages.count_tokens(
            model="m", messages=[{"role": "user", "content": "Count these words, please."}]
        )
        assert counted.input_tokens > 0
        assert calls(upstream, "/v1/messages/count_tokens")[0].json()["model"] == "served-0"


async def test_streamed_messages_event_by_event(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    events = message_events("served-0", ["one", "two"])
    client_saw_first = asyncio.Event()

    upstream.scripts["/v1/messages"] = held_after_first(events, client_saw_first, LIMIT)
    sidecar = await make_sidecar(table(upstream))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/messages",
            json={
                "model": "m",
                "max_tokens": 8,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
            headers={"x-api-key": KEY},
        ) as r,
    ):
        assert await asyncio.wait_for(r.content.readuntil(b"\n\n"), LIMIT) == events[0]
        client_saw_first.set()
        assert await asyncio.wait_for(r.read(), LIMIT) == b"".join(events[1:])


async def test_messages_errors_are_anthropic_shaped(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with claude(sidecar, key="sk-wrong-key") as client:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await client.messages.create(
                model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
    assert raised.value.status_code == 401
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "authentication_error"
    assert KEY not in str(raised.value.body) and "sk-wrong-key" not in str(raised.value.body)
    async with claude(sidecar) as client:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.create(
                model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
        assert missing.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model="m", max_tokens=8, messages="not a list")  # type: ignore[arg-type]
        assert bad.value.body["error"]["type"] == "invalid_request_error"
    async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/v1/messages") as r:
        assert r.status == 405
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    # The same failures on an OpenAI path keep OpenAI's shape.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/chat/completions",
            json={"model": "nope", "messages": []},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r,
    ):
        assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"


async def test_an_upstream_down_on_messages_is_an_anthropic_error(
    make_sidecar: MakeSidecar,
) -> None:
    dead = await FakeUpstream().start()
    await dead.stop()  # its port now refuses connections
    sidecar = await make_sidecar(table(dead, extra="router_settings:\n  num_retries: 0\n"))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/messages",
            json={"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": KEY},
        ) as r,
    ):
        body = await r.json()
    assert r.status == 502
    assert body == {
        "type": "error",
        "error": {"type": "api_error", "message": body["error"]["message"]},
    }


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
async def test_rerank(upstream: FakeUpstream, make_sidecar: MakeSidecar, path: str) -> None:
    sidecar = await make_sidecar(table(upstream))
    asked = {
        "model": "m",
        "query": "what is a sidecar?",
        "documents": ["a motorcycle part", "a proxy"],
        "top_n": 2,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + path, json=asked, headers={"Authorization": f"Bearer {KEY}"}) as r,
    ):
        assert r.status == 200
        ranked = await r.json()
    assert [x["index"] for x in ranked["results"]] == [0, 1]
    assert r.headers["x-sidecar-deployment"] == "dep-0"
    (got,) = calls(upstream, "/v1/rerank")
    assert got.json() == {**asked, "model": "served-0"}


@pytest.mark.parametrize("kind", ["transcriptions", "translations"])
async def test_audio_forms_with_the_openai_sdk(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, kind: str
) -> None:
    sidecar = await make_sidecar(table(upstream))
    audio = os.urandom(3 * 1024 * 1024 + 17)  # a few MiB, not text
    api = getattr(sidecar.openai(KEY).audio, kind)
    extra = {"language": "en"} if kind == "transcriptions" else {}
    with warnings.catch_warnings():
        # The SDK marks translations.create deprecated (OpenAI's own endpoint); servers serve it.
        warnings.simplefilter("ignore", DeprecationWarning)
        got = await api.create(
            model="m",
            file=("speech.wav", audio, "audio/wav"),
            prompt="A test.",
            response_format="json",
            **extra,
        )
    # The upstream's text is the hash of the file as it arrived: every byte, unchanged.
    assert got.text == "sha256:" + hashlib.sha256(audio).hexdigest()
    (received,) = calls(upstream, f"/v1/audio/{kind}")
    assert received.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    seen = got.model_dump()  # what the upstream's MIME parser found, passed back
    assert seen["fields"] == {
        "model": "served-0",
        "prompt": "A test.",
        "response_format": "json",
        **extra,
    }
    assert seen["filename"] == "speech.wav"


async def test_a_form_keeps_every_byte_but_the_model(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream))
    boundary = "sidecarTestBoundary42"
    audio = os.urandom(200_000)
    parts = [
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\nContent-Type: audio/mpeg\r\n\r\n%s\r\n'
        % (boundary.encode(), audio),
        b'--%s\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n' % boundary.encode(),
        b'--%s\r\nContent-Disposition: form-data; name="temperature"\r\n\r\n0.2\r\n'
        % boundary.encode(),
        b"--%s--\r\n" % boundary.encode(),
    ]
    sent = b"".join(parts)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/audio/transcriptions",
            data=sent,
            headers={
                "Authorization": f"Bearer {KEY}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        ) as r,
    ):
        assert r.status == 200, await r.text()
    (received,) = calls(upstream, "/v1/audio/transcriptions")
    assert received.body == sent.replace(b"\r\n\r\nm\r\n", b"\r\n\r\nserved-0\r\n")
    assert received.headers["Content-Type"] == f"multipart/form-data; boundary={boundary}"


def _form(*parts: bytes) -> bytes:
    return b"".join(b"--x\r\n" + p + b"\r\n" for p in parts) + b"--x--\r\n"


_MODEL = b'Content-Disposition: form-data; name="model"\r\n\r\n'
_FILE = b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nAAAA'


@pytest.mark.parametrize(
    "body",
    [
        # Two models: an upstream that reads the first would run the one the key may not use.
        _form(_MODEL + b"gpt-4o-transcribe", _MODEL + b"m", _FILE),
        # A second model disguised as a file by a quoted parameter that holds "filename=".
        _form(
            _MODEL + b"m",
            b'Content-Disposition: form-data; name="model"; x="; filename=y"\r\n\r\ngpt-4o',
            _FILE,
        ),
        # A part without headers followed by a model part.
        _form(b"\r\nheaderless", _MODEL + b"gpt-4o", _MODEL + b"m", _FILE),
        _form(b'Content-Disposition: form-data; name="model"; name="other"\r\n\r\nm', _FILE),
        _form(b'Content-Disposition : form-data; name="model"\r\n\r\nm', _FILE),
        # RFC 2231 names, which the standard library's parser reads as "model": a second model
        # our reading would not see.
        _form(
            _MODEL + b"m",
            b"Content-Disposition: form-data; name*=utf-8''model\r\n\r\ngpt-4o",
            _FILE,
        ),
        _form(
            _MODEL + b"m",
            b'Content-Disposition: form-data; name*0="mod"; name*1="el"\r\n\r\ngpt-4o',
            _FILE,
        ),
        # Found by a hostile review against python-multipart, Go's mime/multipart, busboy
        # and the email package, each of which read a second model here.
        _form(
            _MODEL + b"m",
            b'Content-Disposition: form-data; x="\\\\"; y="; name=model; z="\r\n\r\ngpt-4o',
            _FILE,
        ),
        b"X\n" + _form(_MODEL + b"gpt-4o", _MODEL + b"m", _FILE),  # a "preamble" line
        _form(_MODEL + b"m", _FILE).replace(b"--x\r\n", b"--x \r\n", 1),
        _form(b'X-A: b\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o', _MODEL + b"m"),
        _form(b'Content-Disposition: form-data; name="mod\\el"\r\n\r\ngpt-4o', _MODEL + b"m"),
    ],
)
async def test_an_ambiguous_form_is_refused(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, body: bytes
) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/audio/transcriptions",
            data=body,
            headers={
                "Authorization": f"Bearer {KEY}",
                "Content-Type": "multipart/form-data; boundary=x",
            },
        ) as r,
    ):
        assert r.status == 400, await r.text()
        assert (await r.json())["error"]["code"] == "invalid_form"
    assert not upstream.received


def _stdlib_model(content_type: str, body: bytes) -> list[str]:
    """The model values the standard library's MIME parser finds: what a Python upstream reads."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    return [
        part.get_payload(decode=True).decode()
        for part in message.iter_parts()
        if part.get_param("name", header="content-disposition") == "model"
    ]


def test_the_extended_names_refused_are_read_as_model_by_others() -> None:
    """The refusals above are not hypothetical: Python's own parser reads both as a second model."""
    for name in (b"name*=utf-8''model", b'name*0="mod"; name*1="el"'):
        body = _form(_MODEL + b"m", b"Content-Disposition: form-data; " + name + b"\r\n\r\ngpt-4o")
        assert _stdlib_model("multipart/form-data; boundary=x", body) == ["m", "gpt-4o"]


# Two boundaries a reader could take: the form is split one way by us and another upstream.
_TWO_FORMS = (
    b'--y\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o\r\n--y--\r\n'
    + _form(_MODEL + b"m", _FILE)
)


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary=x; boundary=y",
        "multipart/form-data; boundary=y; boundary=x",
        "multipart/form-data; boundary*=utf-8''x",
        "multipart/form-data; boundary=" + "x" * 71,
        'multipart/form-data; boundary="x "',
        'multipart/form-data; boundary="a\\b"',
    ],
)
async def test_an_ambiguous_boundary_is_refused(
    upstream: FakeUpstream, make_sidecar: MakeSidecar, content_type: str
) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/audio/transcriptions",
            data=_TWO_FORMS,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": content_type},
        ) as r,
    ):
        assert r.status == 400, await r.text()
        assert (await r.json())["error"]["code"] == "invalid_form"
    assert not upstream.received


async def test_a_boundary_in_a_quoted_value_is_not_the_boundary(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    """Read as the standard library reads it: the form split by "y" asks for gpt-4o."""
    content_type = 'multipart/form-data; a="; boundary=x"; boundary=y'
    assert _stdlib_model(content_type, _TWO_FORMS) == ["gpt-4o"]
    sidecar = await make_sidecar(table(upstream))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/audio/transcriptions",
            data=_TWO_FORMS,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": content_type},
        ) as r,
    ):
        assert r.status == 404, await r.text()
        assert "'gpt-4o'" in (await r.json())["error"]["message"]
    assert not upstream.received


async def test_a_quoted_boundary_and_other_parameters_are_read(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream))
    content_type = 'multipart/form-data; charset="utf-8"; boundary="x"'
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.url + "/v1/audio/transcriptions",
            data=_form(_MODEL + b"m", _FILE),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": content_type},
        ) as r,
    ):
        assert r.status == 200, await r.text()
    (received,) = calls(upstream, "/v1/audio/transcriptions")
    assert _stdlib_model(content_type, received.body) == ["served-0"]


async def test_a_non_ascii_boundary_is_a_400_not_a_crash(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream))
    head = (
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=\xe2\x82\xacx\r\nContent-Length: 4\r\n\r\nabcd"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.running.port)
    writer.write(head)
    reply = await asyncio.wait_for(reader.read(4096), LIMIT)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:80]
    assert b'"invalid_form"' in reply


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        ("application/json", b'{"model": "m"}', "invalid_content_type"),
        ("multipart/form-data", b"--x\r\n", "invalid_form"),
        ("multipart/form-data; boundary=x", b"no parts at all", "invalid_form"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nm',
            "invalid_form",
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc\r\n--x--\r\n',
            None,
        ),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\n\xff\xfe\r\n--x--\r\n',
            "invalid_form",
        ),
    ],
)
async def test_a_bad_form_is_a_clear_400(
    upstream: FakeUpstream,
    make_sidecar: MakeSidecar,
    content_type: str,
    body: bytes,
    code: str | None,
) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sidecar.url + "/v1/audio/transcriptions",
            data=body,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": content_type},
        ) as r:
            error = (await r.json())["error"]
        assert r.status == 400
        assert error["code"] == code
        if code is None:
            assert error["param"] == "model"  # a form without a model part
        async with http.get(sidecar.url + "/health/liveliness") as alive:
            assert alive.status == 200
    assert not upstream.received


async def test_tokenize_goes_to_the_servers_root(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with aiohttp.ClientSession() as http:
        for path in ("/tokenize", "/v1/tokenize"):
            async with http.post(
                sidecar.url + path,
                json={"model": "m", "prompt": "one two three"},
                headers={"Authorization": f"Bearer {KEY}"},
            ) as r:
                assert (await r.json())["count"] == 3
        async with http.post(
            sidecar.url + "/detokenize",
            json={"model": "m", "tokens": [1, 2]},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r:
            assert (await r.json())["prompt"] == "t1 t2"
    assert [r.path for r in upstream.received] == ["/tokenize", "/tokenize", "/detokenize"]
    assert upstream.received[0].json() == {"model": "served-0", "prompt": "one two three"}


async def test_supported_endpoints_choose_who_serves_what(make_sidecar: MakeSidecar) -> None:
    chat_only, everything = await FakeUpstream().start(), await FakeUpstream().start()
    try:
        sidecar = await make_sidecar(f"""
model_list:
  - model_name: m
    litellm_params: {{model: hosted_vllm/a, api_base: "{chat_only.base}"}}
    model_info: {{supported_endpoints: ["/v1/chat/completions"]}}
  - model_name: m
    litellm_params: {{model: hosted_vllm/b, api_base: "{everything.base}"}}
  - model_name: chat-only
    litellm_params: {{model: hosted_vllm/a, api_base: "{chat_only.base}"}}
    model_info: {{supported_endpoints: ["/chat/completions"]}}
general_settings:
  master_key: {KEY}
""")
        client = sidecar.openai(KEY)
        for _ in range(6):
            await client.responses.create(model="m", input="hi")
        assert len(calls(everything, "/v1/responses")) == 6
        assert not calls(chat_only, "/v1/responses")
        with pytest.raises(Exception) as refused:
            await client.responses.create(model="chat-only", input="hi")
        assert getattr(refused.value, "status_code", None) == 404
        body: Any = getattr(refused.value, "body", {})
        assert body["code"] == "unsupported_endpoint"
        assert "/v1/responses" in body["message"]
        chat = await client.chat.completions.create(
            model="chat-only", messages=[{"role": "user", "content": "x"}]
        )
        assert chat.choices[0].message.content == "Hello from upstream"
    finally:
        await chat_only.stop()
        await everything.stop()


async def test_azure_serves_responses_and_audio_in_its_url_form(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    async def made(request: web.Request, got: Received) -> web.StreamResponse:
        return web.json_response(
            {"id": "resp_az", "object": "response", "output": [], "model": "x"}
        )

    upstream.scripts["/openai/responses"] = made
    sidecar = await make_sidecar(f"""
model_list:
  - model_name: az
    litellm_params:
      model: azure/my-deployment
      api_base: http://127.0.0.1:{upstream.port}
      api_key: azure-secret-key
      api_version: 2025-03-01-preview
general_settings:
  master_key: {KEY}
""")
    client = sidecar.openai(KEY)
    assert (await client.responses.create(model="az", input="hi")).id == "resp_az"
    got = upstream.last
    assert got.path == "/openai/responses"
    assert got.query == {"api-version": "2025-03-01-preview"}
    assert got.headers["api-key"] == "azure-secret-key"
    assert got.json()["model"] == "my-deployment"
    with pytest.raises(Exception) as refused:
        async with claude(sidecar) as anthropic_client:
            await anthropic_client.messages.create(
                model="az", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
    assert getattr(refused.value, "status_code", None) == 404
    body: Any = getattr(refused.value, "body", {})
    assert body["error"]["type"] == "not_found_error"


async def test_a_supported_endpoint_its_provider_lacks_is_a_config_error(
    make_sidecar: MakeSidecar,
) -> None:
    from sidecar.deployment import ConfigError

    with pytest.raises(ConfigError) as raised:
        await make_sidecar("""
model_list:
  - model_name: az
    litellm_params: {model: azure/d, api_base: "http://127.0.0.1:1", api_key: k, api_version: v}
    model_info: {supported_endpoints: ["/v1/messages"]}
""")
    assert "model_list[0].model_info.supported_endpoints" in str(raised.value)
    assert "/v1/messages" in str(raised.value)
    with pytest.raises(ConfigError, match="names no endpoint"):
        await make_sidecar("""
model_list:
  - model_name: m
    litellm_params: {model: hosted_vllm/d, api_base: "http://127.0.0.1:1/v1"}
    model_info: {supported_endpoints: ["/v1/nothing"]}
""")


async def test_rerank_is_cached_when_listed(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    cache = (
        "litellm_settings:\n  cache: true\n  cache_params:\n    supported_call_types: [arerank]\n"
    )
    sidecar = await make_sidecar(table(upstream, extra=cache))
    asked = {"model": "m", "query": "q", "documents": ["a", "b"]}
    seen = []
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(
                sidecar.url + "/v1/rerank", json=asked, headers={"Authorization": f"Bearer {KEY}"}
            ) as r:
                seen.append((r.headers["x-sidecar-cache"], await r.read()))
        async with http.post(
            sidecar.url + "/v1/responses",
            json={"model": "m", "input": "x"},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r:
            assert r.headers["x-sidecar-cache"] == "bypass"  # not listed
    assert [s[0] for s in seen] == ["miss", "hit"] and seen[0][1] == seen[1][1]
    assert len(calls(upstream, "/v1/rerank")) == 1


async def test_the_id_is_found_when_the_stream_begins_with_a_comment(
    make_sidecar: MakeSidecar,
) -> None:
    upstreams = [await FakeUpstream().start() for _ in range(3)]

    def split_stream(fake: FakeUpstream) -> Any:
        async def script(request: web.Request, got: Received) -> web.StreamResponse:
            made = {"id": f"resp_{fake.port}_{len(fake.received)}", "object": "response"}
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b": keep-alive\n\n")  # a comment first, in a write of its own
            await asyncio.sleep(0.01)
            event = named_event("response.created", {"type": "response.created", "response": made})
            await response.write(event[:20])  # and the event in two pieces
            await asyncio.sleep(0.01)
            await response.write(event[20:])
            await response.write_eof()
            return response

        return script

    try:
        for fake in upstreams:
            fake.scripts["/v1/responses"] = split_stream(fake)
        sidecar = await make_sidecar(table(*upstreams))
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(
                    sidecar.url + "/v1/responses",
                    json={"model": "m", "input": "x", "stream": True},
                    headers={"Authorization": f"Bearer {KEY}"},
                ) as r:
                    text = await r.read()
                made_id = text.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
                for _ in range(4):
                    async with http.post(
                        sidecar.url + "/v1/responses",
                        json={
                            "model": "m",
                            "input": "y",
                            "stream": True,
                            "previous_response_id": made_id,
                        },
                        headers={"Authorization": f"Bearer {KEY}"},
                    ) as r:
                        assert f'"id":"resp_{made_id.split("_")[1]}_'.encode() in await r.read()
    finally:
        for u in upstreams:
            await u.stop()


async def test_counting_tokens_spends_none(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(table(upstream))
    async with claude(sidecar) as client:
        counted = await client.messages.count_tokens(
            model="m", messages=[{"role": "user", "content": "word " * 400}]
        )
    assert counted.input_tokens > 100
    async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/metrics") as r:
        metrics = await r.text()
    assert "sidecar_tokens_total{" not in metrics


def test_the_affinitys_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar import affinity

    monkeypatch.setattr(affinity, "LIMIT", 10)
    known = affinity.Affinity()
    known._keep("resp_kept", "dep-0")
    for i in range(100):
        known._keep(f"resp_{i}", "dep-1")
        assert asyncio.run(known.where("resp_kept")) == "dep-0"  # read: the last to go
    assert len(known._known) == 10
    assert asyncio.run(known.where("resp_0")) is None


async def test_a_streamed_messages_usage_is_counted(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    async def paced(request: web.Request, got: Received) -> web.StreamResponse:
        # Each event its own write: the input tokens come first, the output tokens last.
        return await sse(request, message_events("served-0", ["a", "b", "c"]), pause=0.02)

    upstream.scripts["/v1/messages"] = paced
    await stream_is_counted(await make_sidecar(table(upstream)), "abc")


async def stream_is_counted(sidecar: Sidecar, text: str) -> None:
    """A Messages stream through Anthropic's SDK gives `text`, and its tokens are counted:
    5 in (from its first event) and 3 out (from its last)."""
    async with (
        claude(sidecar) as client,
        client.messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        assert "".join([t async for t in stream.text_stream]) == text
    async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/metrics") as r:
        metrics = await r.text()
    assert 'sidecar_tokens_total{model="m",kind="prompt"} 5' in metrics
    assert 'sidecar_tokens_total{model="m",kind="completion"} 3' in metrics


async def test_a_close_delimited_messages_stream_is_counted(make_sidecar: MakeSidecar) -> None:
    """A stream whose end is the connection's (no chunking) cannot be cached, but its first
    event, which holds the input tokens, is still read."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    events = message_events("served-0", ["a", "b"])
    upstream = await RawUpstream(pieces=[head, *events], pause=0.02).start()
    try:
        await stream_is_counted(await make_sidecar(table(upstream)), "ab")  # type: ignore[arg-type]
    finally:
        await upstream.stop()


async def test_a_litellm_table_listing_paths_we_do_not_route_loads(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    from sidecar import config as configs

    text = f"""
model_list:
  - model_name: m
    litellm_params: {{model: hosted_vllm/d, api_base: "{upstream.base}"}}
    model_info: {{supported_endpoints: ["/v1/messages", "/v1/images/generations"]}}
"""
    sidecar = await make_sidecar(text)
    assert any("/v1/images/generations" in w for w in sidecar.running.gateway.state.config.warnings)
    async with claude(sidecar) as client:
        counted = await client.messages.count_tokens(
            model="m", messages=[{"role": "user", "content": "a few words here"}]
        )  # count_tokens comes with /v1/messages
    assert counted.input_tokens > 0
    async with (
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + "/v1/chat/completions", json={"model": "m", "messages": []}) as r,
    ):
        assert r.status == 404  # not listed
    assert configs is not None


async def test_the_http_layers_refusals_on_messages_are_anthropic_shaped(
    upstream: FakeUpstream, make_sidecar: MakeSidecar
) -> None:
    sidecar = await make_sidecar(
        table(upstream, extra="sidecar_settings:\n  max_request_bytes: 2000\n")
    )
    big = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x" * 5000}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sidecar.url + "/v1/messages", json=big, headers={"x-api-key": KEY}
        ) as r:
            assert r.status == 413
            assert (await r.json())["error"]["type"] == "request_too_large"
        async with http.post(
            sidecar.url + "/v1/chat/completions",
            json=big,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"
    assert not upstream.received
