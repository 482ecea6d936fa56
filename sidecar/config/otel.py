"""sidecar_settings.otel, or OpenTelemetry's own environment variables: where traces go.

Tracing is on when an endpoint is given, in the file or as OTEL_EXPORTER_OTLP_ENDPOINT (a
base URL, to which /v1/traces is added) or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the whole
URL), as OpenTelemetry's SDKs read them. Its package is an optional extra, checked here so
that a missing one is a config error at load, not a failure at the first request.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sidecar.config.values import mapping, resolve, secret
from sidecar.deployment import ConfigError

TRACES_PATH = "/v1/traces"
FIELDS = ("endpoint", "service_name", "headers", "timeout", "max_queue", "sample_ratio")
# OTEL_TRACES_SAMPLER values whose OTEL_TRACES_SAMPLER_ARG is the ratio of new traces kept.
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")


@dataclass(frozen=True, slots=True)
class OtelSettings:
    traces_url: str  # where spans are POSTed (OTLP/HTTP, protobuf)
    service_name: str = "sidecar"
    # Sent with every export (a collector's auth): secrets, never shown.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 5.0  # seconds an export may take; spans wait in the queue meanwhile
    max_queue: int = 2048  # spans held for export at most; more are dropped, and counted
    sample_ratio: float = 1.0  # of the traces begun here; a client's traceparent decides its own

    @property
    def target(self) -> str:
        """What may be shown of the endpoint: scheme, host, port and path, no credentials."""
        parts = urlsplit(self.traces_url)
        return (
            f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        )


def otel_settings(raw: Any, env: Mapping[str, str]) -> OtelSettings | None:
    where = "sidecar_settings.otel"
    given = dict(mapping(raw, where))
    for key in given:
        if key not in FIELDS:
            raise ConfigError(f"{where}.{key}", f"unknown key (known: {', '.join(FIELDS)})")
    endpoint = given.get("endpoint")
    if endpoint is not None:
        url = _url(resolve(endpoint, env, f"{where}.endpoint"), f"{where}.endpoint", base=True)
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        url = _url(env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = _url(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "OTEL_EXPORTER_OTLP_ENDPOINT", base=True)
    else:
        if given:
            raise ConfigError(f"{where}.endpoint", "is needed to send traces anywhere")
        return None
    name = given.get("service_name", env.get("OTEL_SERVICE_NAME") or "sidecar")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.service_name", "must be a non-empty string")
    headers = {}
    for key, value in mapping(given.get("headers"), f"{where}.headers").items():
        at = f"{where}.headers.{key}"
        headers[str(key)] = secret(resolve(value, env, at), at)
    timeout = given.get("timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
        raise ConfigError(f"{where}.timeout", "must be a number of seconds above 0, at most 60")
    queue = given.get("max_queue", 2048)
    if isinstance(queue, bool) or not isinstance(queue, int) or not 1 <= queue <= 1_000_000:
        raise ConfigError(f"{where}.max_queue", "must be a whole number from 1 to 1000000")
    ratio: Any = given.get("sample_ratio")
    at = f"{where}.sample_ratio"
    if ratio is None and env.get("OTEL_TRACES_SAMPLER") in RATIO_SAMPLERS:
        ratio, at = env.get("OTEL_TRACES_SAMPLER_ARG", "1"), "OTEL_TRACES_SAMPLER_ARG"
        try:
            ratio = float(ratio)
        except ValueError:
            raise ConfigError(at, "must be a number from 0 to 1") from None
    if ratio is None:
        ratio = 1.0
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError(at, "must be a number from 0 to 1")
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        raise ConfigError(
            where,
            "tracing needs the OpenTelemetry SDK and its OTLP exporter: "
            "pip install 'sidecar[otel]'",
        )
    return OtelSettings(url, name, headers, float(timeout), queue, float(ratio))


def _url(value: Any, where: str, base: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, "must be a URL (http://collector:4318)")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(where, "must be an http:// or https:// URL (http://collector:4318)")
    url = value.strip().rstrip("/")
    if base and not url.endswith(TRACES_PATH):
        url += TRACES_PATH
    return url
