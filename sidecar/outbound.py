"""The upstream request for one attempt: the body as this deployment takes it, and its head.

Pure: from the client's parsed body and a deployment to the bytes to send (and the translation
its reply needs). Retries and fallbacks call it once per attempt, so each deployment gets its
own model name, defaults and translations while the client's body stays as it came.
"""

from __future__ import annotations

from typing import Any

from sidecar import errors
from sidecar import request as requests
from sidecar.deployment import Deployment
from sidecar.forms import Form
from sidecar.headers import IDENTITY
from sidecar.providers import translate
from sidecar.routes import Endpoint

TEXT_TO_CHAT = translate.TextToChat()


def build(
    deployment: Deployment,
    endpoint: Endpoint,
    body: dict[str, Any],
    wildcard: str | None,
    client: bytes,
    encoding: bytes,
    form: Form | None = None,
) -> tuple[tuple[bytes | memoryview, ...], translate.TextToChat | None]:
    """(the request's pieces, the reply's translation) for `deployment`; `wildcard` is what a
    pattern group's '*' matched, `client` and `encoding` the header lines taken from the client
    (encoding is replaced by identity when the reply must be translated: it is parsed here).
    `form`: the body is that multipart form, sent with this deployment's model in it."""
    model = deployment.upstream_model(wildcard)
    try:
        head = deployment.head(endpoint, wildcard)
    except ValueError:
        raise errors.bad_request(
            f"The model name '{body['model']}' cannot name a deployment of this upstream: use "
            "letters, digits, '.', '-' and '_'.",
            "model",
            "invalid_model_name",
        ) from None
    if head is None or deployment.origin is None:
        raise errors.bad_request(
            f"The model '{body['model']}' does not serve {endpoint.value}.",
            "model",
            "unsupported_endpoint",
        )
    if form is not None:
        pieces = form.with_model(model)
        framing = b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
            form.content_type.encode("latin-1", "replace"),
            sum(len(p) for p in pieces),
        )
        return (head, client, encoding, framing, *pieces), None
    translation = None
    defaults = deployment.defaults[endpoint]
    if endpoint is Endpoint.CHAT:
        if not deployment.supports_system_message:
            body = {**body, "messages": translate.fold_system_messages(body["messages"])}
        if deployment.chat_over_text:
            body = translate.chat_to_text_request(body)
            defaults = deployment.defaults[Endpoint.COMPLETIONS]
            translation = TEXT_TO_CHAT
            encoding = IDENTITY
    payload = requests.upstream_body(body, model, defaults)
    length = b"Content-Length: %d\r\n\r\n" % len(payload)
    return (head, client, encoding, length, payload), translation
