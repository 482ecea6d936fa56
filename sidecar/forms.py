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
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.I)
_NAME = re.compile(rb'(?:^|;)\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]+))', re.I)
_FILENAME = re.compile(rb"(?:^|;)\s*filename\*?\s*=", re.I)


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
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise _malformed("its Content-Type names no boundary")
    delimiter = b"--" + (found.group(1) or found.group(2)).encode("latin-1")
    at = body.find(delimiter)
    if at < 0:
        raise _malformed("it has no part")
    fields: dict[str, str] = {}
    model: tuple[int, int] | None = None
    while True:
        at += len(delimiter)
        if body.startswith(b"--", at):
            break  # the close delimiter: what follows is the epilogue
        if not body.startswith(b"\r\n", at):
            raise _malformed("a delimiter is not followed by a line break")
        head_end = body.find(b"\r\n\r\n", at + 2)
        if head_end < 0:
            raise _malformed("a part's headers do not end")
        start = head_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise _malformed("it does not end with its boundary")
        name, is_file = _disposition(body[at + 2 : head_end])
        if name is not None and not is_file and end - start <= MAX_FIELD:
            try:
                fields[name] = body[start:end].decode("utf-8")
            except UnicodeDecodeError:
                raise _malformed(f"the field '{name}' is not UTF-8 text") from None
            if name == "model":
                model = (start, end)
        at = end + 2
    if model is None or not fields.get("model"):
        raise errors.bad_request("You must provide a model parameter.", "model")
    return Form(body, content_type, fields, model)


def _disposition(head: bytes) -> tuple[str | None, bool]:
    """The part's field name and whether it is a file, from its Content-Disposition."""
    for line in head.split(b"\r\n"):
        label, _, value = line.partition(b":")
        if label.strip().lower() != b"content-disposition":
            continue
        found = _NAME.search(value)
        if found is None:
            return None, False
        raw = found.group(1) if found.group(1) is not None else found.group(2)
        name = re.sub(rb"\\(.)", rb"\1", raw).decode("utf-8", "replace")
        return name, _FILENAME.search(value) is not None
    return None, False


def _malformed(why: str) -> errors.GatewayError:
    return errors.bad_request(
        f"The multipart/form-data body is malformed: {why}.", code="invalid_form"
    )
