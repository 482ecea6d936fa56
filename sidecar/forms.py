"""multipart/form-data bodies (the audio endpoints): their text fields, and where the `model`
field's value lies, so that the form can be sent on with another model name and every other
byte as it came. Pure.

The form is read from the body as the server received it (whole, within max_request_bytes):
the file is never copied, only sliced around the model's value (RFC 7578, RFC 2046 5.1).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sidecar import errors

MAX_FIELD = 64 * 1024  # bytes: a longer part without a filename is passed on, not read
# RFC 2046 5.1.1: a boundary's characters, 1 to 70 of them, not ending with a space.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# One parameter of a header value (RFC 9110 5.6.6): a token, or a quoted string with escapes.
_PARAM = re.compile(
    rb'\s*;\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]*))'
)


class Form(NamedTuple):
    body: bytes  # the whole form, as the client sent it
    content_type: str  # the client's, naming the boundary
    fields: dict[str, str]  # the parts without a filename, by name (the last of a name wins)
    model: tuple[int, int]  # where the model field's value starts and ends in `body`

    def with_model(self, model: str) -> tuple[memoryview, bytes, memoryview]:
        """The form with `model` in place of the client's, in three pieces that share the
        client's bytes (the file is not copied)."""
        start, end = self.model
        whole = memoryview(self.body)
        return whole[:start], model.encode("utf-8"), whole[end:]


def parse(body: bytes, content_type: str | None) -> Form:
    """The form, or a 400 that says what is wrong with it."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise errors.bad_request(
            "This endpoint takes a multipart/form-data body (a file and its fields).",
            code="invalid_content_type",
        )
    assert content_type is not None
    params = _params(
        content_type.encode("latin-1", "replace").partition(b";")[2], "its Content-Type"
    )
    boundary = params.get(b"boundary")
    if boundary is None or _BOUNDARY.fullmatch(boundary) is None:
        raise _malformed("its Content-Type names no boundary of 1 to 70 characters")
    delimiter = b"--" + boundary
    # No preamble: where one ends is read differently by different parsers (a bare LF before
    # the first delimiter, or spaces after it), and no client sends one.
    if not body.startswith(delimiter + b"\r\n"):
        raise _malformed("it does not begin with its boundary and a line break")
    at = 0
    fields: dict[str, str] = {}
    model: tuple[int, int] | None = None
    while True:
        at += len(delimiter)
        if body.startswith(b"--", at):
            break  # the close delimiter: what follows is the epilogue
        if not body.startswith(b"\r\n", at):
            raise _malformed("a delimiter is not followed by a line break")
        at += 2
        if body.startswith(b"\r\n", at):
            head_end, start = at, at + 2  # a part without headers
        else:
            head_end = body.find(b"\r\n\r\n", at)
            if head_end < 0:
                raise _malformed("a part's headers do not end")
            start = head_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise _malformed("it does not end with its boundary")
        name, is_file = _disposition(body[at:head_end])
        if name == "model":
            # One model, read the same way by every server: a second one could name another
            # model to an upstream that reads the first.
            if model is not None or is_file:
                raise _malformed("it has more than one 'model' part, or a 'model' file")
            model = (start, end)
        if name is not None and not is_file and end - start <= MAX_FIELD:
            try:
                fields[name] = body[start:end].decode("utf-8")
            except UnicodeDecodeError:
                if name == "model":
                    raise _malformed("the field 'model' is not UTF-8 text") from None
        at = end + 2
    if model is None or not fields.get("model"):
        raise errors.bad_request("You must provide a model parameter.", "model")
    return Form(body, content_type, fields, model)


def _disposition(head: bytes) -> tuple[str | None, bool]:
    """The part's field name and whether it is a file, from its Content-Disposition; a 400
    for one that cannot be read one way only."""
    found: tuple[str | None, bool] | None = None
    for line in head.split(b"\r\n"):
        if b"\n" in line or b"\r" in line:
            raise _malformed("a part's headers hold a bare CR or LF")
        label, colon, value = line.partition(b":")
        if not colon or label != label.strip():
            raise _malformed("a part's header line is not 'Name: value'")
        if label.lower() != b"content-disposition":
            continue
        if found is not None:
            raise _malformed("a part has two Content-Disposition headers")
        kind, _, rest = value.strip().partition(b";")
        if kind.strip().lower() != b"form-data":
            raise _malformed("a part is not form-data")
        params = _params(rest, "a part's Content-Disposition")
        name = params.get(b"name")
        is_file = b"filename" in params or b"filename*" in params
        found = (None if name is None else name.decode("utf-8", "replace"), is_file)
    return found if found is not None else (None, False)


def _params(text: bytes, where: str) -> dict[bytes, bytes]:
    """The `; key=value` parameters of a header value, read the one way every parser reads
    them, or a 400: a key named twice, or in RFC 2231's extended form (`name*=utf-8''model`,
    `name*0`), could be read otherwise by the upstream than by us; only `filename*` is
    allowed, as it marks a file either way."""
    params: dict[bytes, bytes] = {}
    text = b";" + text
    at = 0
    while at < len(text.rstrip()):
        matched = _PARAM.match(text, at)
        if matched is None:
            raise _malformed(f"{where} does not parse")
        key = matched.group(1).lower()
        if key in params or (b"*" in key and key != b"filename*"):
            raise _malformed(f"{where} names '{key.decode()}' twice or in an extended form")
        quoted = matched.group(2)
        if quoted is not None and b"\\" in quoted:
            # Parsers disagree on escapes in quoted strings (RFC 7578 4.2 leaves them out):
            # one reads "a\\b" as a backslash and b, another as ab.
            raise _malformed(f"{where} has a backslash in a quoted value")
        params[key] = quoted if quoted is not None else matched.group(3)
        at = matched.end()
    return params


def _malformed(why: str) -> errors.GatewayError:
    return errors.bad_request(
        f"The multipart/form-data body is malformed: {why}.", code="invalid_form"
    )
