"""The client's request body: parse, validate what the gateway relies on, build the upstream body.

Pure functions: bytes in, a dict or bytes out, BadRequest-shaped GatewayErrors for bad input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import orjson

from sidecar import errors
from sidecar.routes import Endpoint


def parse(raw: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """The body as a dict; 400 for anything that is not an object with a string `model`."""
    if not raw:
        raise errors.bad_request("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise errors.bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise errors.bad_request("You must provide a model parameter.", "model")
    if not isinstance(model, str) or not model:
        raise errors.bad_request("'model' must be a non-empty string.", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise errors.bad_request("'stream' must be a boolean.", "stream")
    if endpoint is Endpoint.CHAT or endpoint is Endpoint.MESSAGES:
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise errors.bad_request("'messages' must be a list of message objects.", "messages")
    elif endpoint is Endpoint.COMPLETIONS:
        if not _is_prompt(body.get("prompt")):
            raise errors.bad_request(
                "'prompt' must be a string, a list of strings, or tokens (a list of integers, "
                "or a list of such lists).",
                "prompt",
            )
    elif endpoint is Endpoint.EMBEDDINGS and "input" not in body:
        raise errors.bad_request("You must provide an input parameter.", "input")
    return body


# orjson reads integers outside [-2**63, 2**64) as floats, and would send a 30-digit seed on as
# 1.2345678901234568e+29. Such a float is written back with an exponent ("e+"), which a
# request body rarely holds: only then is the client's body looked at closely, for a number of
# 19 digits or more where a JSON value starts (the expression costs ~5 µs a KiB), and only
# then parsed exactly by the stdlib, and an integer out of range refused, naming its field.
_LONG_NUMBER = re.compile(rb"[:\[,]\s*-?\d{19}")
_INT_RANGE = range(-(2**63), 2**64)


def check_integers(raw: bytes, payload: bytes) -> None:
    """400 when the client's body (`raw`) holds an integer that orjson widened to a float in
    the body built for the upstream (`payload`). Costs one substring search when none did."""
    if b"e+" in payload and _LONG_NUMBER.search(raw):
        _refuse_wide_integers(raw)


def _refuse_wide_integers(raw: bytes) -> None:
    try:
        where = _wide_integer(json.loads(raw), "")
    except (ValueError, RecursionError):
        raise errors.bad_request(
            "The body nests too deep for its long numbers to be checked; flatten it.",
            code="integer_out_of_range",
        ) from None
    if where is not None:
        field = where.lstrip(".")
        raise errors.bad_request(
            f"'{field}' is an integer beyond 64 bits, which this gateway cannot pass on "
            "unchanged; send it as a string or a smaller number.",
            field,
            "integer_out_of_range",
        )


def _wide_integer(value: Any, path: str) -> str | None:
    """The path of the first integer outside 64 bits in a parsed body, if any."""
    if isinstance(value, int) and not isinstance(value, bool):
        return path if value not in _INT_RANGE else None
    if isinstance(value, dict):
        items: Any = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in items:
        found = _wide_integer(item, where)
        if found is not None:
            return found
    return None


def _is_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return True
    if not isinstance(prompt, list) or not prompt:
        return False
    first = prompt[0]
    if isinstance(first, str):
        return all(isinstance(p, str) for p in prompt)
    if isinstance(first, list):
        return all(isinstance(p, list) and p and _tokens(p) for p in prompt)
    return _tokens(prompt)


def _tokens(items: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in items)


MAX_NESTING = 255  # levels of arrays and objects orjson writes


def upstream_body(body: dict[str, Any], model: str, defaults: Mapping[str, Any]) -> bytes:
    """The body sent upstream: the client's, with the upstream model name and the deployment's
    defaults for parameters the client did not set. The client's dict is not changed."""
    out = {**defaults, **body} if defaults else dict(body)
    out["model"] = model
    try:
        return orjson.dumps(out)
    except orjson.JSONEncodeError:
        # orjson reads 1,024 levels of nesting but writes only 255.
        raise errors.bad_request(
            f"The request body nests deeper than {MAX_NESTING} levels, more than this gateway "
            "passes on.",
            code="nesting_too_deep",
        ) from None
