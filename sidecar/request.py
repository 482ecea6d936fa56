"""The client's request body: parse, validate what the gateway relies on, build the upstream body.

Pure functions: bytes in, a dict or bytes out, BadRequest-shaped GatewayErrors for bad input.
"""

from __future__ import annotations

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
    if endpoint is Endpoint.CHAT:
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


def upstream_body(body: dict[str, Any], model: str, defaults: Mapping[str, Any]) -> bytes:
    """The body sent upstream: the client's, with the upstream model name and the deployment's
    defaults for parameters the client did not set. The client's dict is not changed."""
    out = {**defaults, **body} if defaults else dict(body)
    out["model"] = model
    return orjson.dumps(out)
