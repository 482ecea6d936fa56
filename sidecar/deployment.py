"""What one routing-table entry becomes once validated: everything a request needs, prepared once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sidecar.origin import Origin
from sidecar.routes import Endpoint
from sidecar.url import URL

WILDCARD_IN_PATH = b"%2A"  # a '*' as it stands, percent-encoded, in a path built from a pattern
# What a name filled into a URL path may hold: Azure's rule for deployment names, and nothing
# that could end the segment or the path ('/', '?', '#', '%', '..' alone, spaces, CR/LF).
_PATH_NAME = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._-]{1,64}")


class ConfigError(Exception):
    """An invalid routing table. `where` is the key path, e.g. model_list[2].litellm_params.model."""

    def __init__(self, where: str, message: str, file: str = "") -> None:
        super().__init__(message)
        self.where = where
        self.message = message
        self.file = file

    def __str__(self) -> str:
        prefix = f"{self.file}: " if self.file else ""
        where = f"{self.where}: " if self.where else ""
        return f"{prefix}{where}{self.message}"


@dataclass(frozen=True, slots=True)
class Params:
    """An entry's litellm_params, type-checked, with os.environ/ references resolved.

    None means "not given" throughout; api_key "" means "given empty: send no key".
    """

    provider: str
    model: str  # the upstream model name: the part after the provider prefix
    api_base: str | None = None
    api_key: str | None = None
    api_version: str | None = None
    organization: str | None = None
    timeout: float | None = None  # seconds until the reply starts, and of silence between chunks
    stream_timeout: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    weight: float | None = None
    max_retries: int | None = None
    mock_response: str | None = None
    supports_system_message: bool | None = None
    input_cost_per_token: float | str | None = None  # USD (LiteLLM's keys; YAML may give text)
    output_cost_per_token: float | str | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # OpenAI request parameters
    extra_body: Mapping[str, Any] = field(default_factory=dict)  # sent as given, on every call


class Prices(NamedTuple):
    input: float  # USD per prompt token
    output: float  # USD per completion token

    def cost(self, prompt: int, completion: int) -> float:
        return prompt * self.input + completion * self.output


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream that can serve a model group, ready for the hot path."""

    id: str  # names the deployment in response headers and logs; never secret
    group: str  # the model_name clients send; may hold one '*'
    provider: str
    model: str  # upstream model name; a '*' in it takes the part a wildcard group matched
    urls: Mapping[Endpoint, URL]  # the endpoints this deployment serves, and where
    headers: Mapping[str, str]  # auth and extra headers, built once at load time
    defaults: Mapping[Endpoint, Mapping[str, Any]]  # request parameters the client may override
    timeout: float  # seconds of upstream silence allowed: before the reply, and between chunks
    stream_timeout: float | None = None  # seconds of silence allowed once the reply began
    origin: Origin | None = None  # where its connections go; None for mock deployments
    heads: Mapping[Endpoint, bytes] = field(default_factory=dict)  # request heads, per endpoint
    # Where a wildcard's match goes into a head (Azure deployment names live in the path).
    model_slots: Mapping[Endpoint, int] = field(default_factory=dict)
    chat_over_text: bool = False  # chat is served by the upstream's /completions, translated
    mock_response: str | None = None
    supports_system_message: bool = True
    rpm: int | None = None
    tpm: int | None = None
    weight: float | None = None
    max_retries: int | None = None  # this deployment's group retries; None: router_settings'
    secrets: tuple[str, ...] = ()  # its keys as sent, never to be echoed in an error we write
    # The endpoints it may be chosen for: those it has a head for; a mock, chat and completions.
    endpoints: frozenset[Endpoint] = frozenset()
    prices: Prices | None = None  # USD per input and per output token; None: no cost is told
    # Takes stream_options.include_usage: asked for it when a client streams without it.
    stream_usage: bool = True

    def head(self, endpoint: Endpoint, wildcard: str | None) -> bytes | None:
        """The request head for an endpoint, with what a pattern's '*' matched filled into the
        path where the model name stands there; ValueError for text that cannot stand in a path."""
        head = self.heads.get(endpoint)
        slot = self.model_slots.get(endpoint)
        if head is None or slot is None or wildcard is None:
            return head
        if not _PATH_NAME.fullmatch(wildcard):
            raise ValueError(wildcard)
        return head[:slot] + wildcard.encode() + head[slot + len(WILDCARD_IN_PATH) :]

    def upstream_model(self, wildcard: str | None) -> str:
        if wildcard is None or "*" not in self.model:
            return self.model
        return self.model.replace("*", wildcard, 1)
