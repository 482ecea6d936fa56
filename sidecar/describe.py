"""The routing table as text, for --check. Keys appear only as short fingerprints."""

from __future__ import annotations

from sidecar import auth
from sidecar.config import Config
from sidecar.routes import Endpoint

_KEY_HEADERS = ("authorization", "api-key")


def describe(config: Config) -> str:
    lines = [f"{config.path}: OK, {len(config.deployments)} deployments"]
    for d in config.deployments:
        if d.mock_response is not None:
            target = "mock_response"
        else:
            # Where its calls go, and what it serves: every URL would make the line unreadable.
            endpoints = [e for e in Endpoint if e in d.urls]
            target = f"{d.urls[endpoints[0]]}, serving " + " ".join(e.value for e in endpoints)
        sent = next((v for k, v in d.headers.items() if k.lower() in _KEY_HEADERS), None)
        key = auth.fingerprint(auth.digest(sent.removeprefix("Bearer "))) if sent else "no key"
        lines.append(f"  {d.group} -> {d.provider}/{d.model} [{d.id}] {target} ({key})")
    if not config.keys:
        lines.append("keys: none (open to every caller)")
    for client in config.keys:
        models = "all models" if client.models is None else "models " + ", ".join(client.names)
        limits = [f"{n} {v}" for n, v in (("rpm", client.rpm), ("tpm", client.tpm)) if v]
        lines.append(
            f"key {client.name}: {auth.fingerprint(client.digest)}, " + ", ".join([models, *limits])
        )
    shared = config.shared
    if shared is None:
        lines.append("shared state: none (each process counts its own limits)")
    else:
        every = (
            "every admission asks Redis"
            if shared.sync_interval == 0
            else f"synced every {shared.sync_interval:g} s"
        )
        auth_note = ", with a password" if shared.password else ""
        lines.append(
            f"shared state: {shared.target}{auth_note}, namespace {shared.namespace}, {every}, "
            f"on Redis down: {shared.on_redis_down}"
        )
    otel = config.otel
    if otel is not None:
        headers = f", with headers {', '.join(sorted(otel.headers))}" if otel.headers else ""
        lines.append(
            f"traces: OTLP/HTTP to {otel.target}{headers}, service {otel.service_name}, "
            f"queue {otel.max_queue} spans, export timeout {otel.timeout:g} s, "
            f"{otel.sample_ratio:.0%} of new traces kept"
        )
    cache = config.cache
    if cache is not None:
        where = (
            f"in memory, up to {cache.max_bytes // (1024 * 1024)} MiB"
            if cache.redis is None
            else f"on {cache.redis.target}, namespace {cache.namespace}"
        )
        served = ", ".join(e.value for e in Endpoint if e in cache.endpoints)
        mode = "default_on" if cache.default_on else "default_off"
        lines.append(f"response cache: {where}, ttl {cache.ttl:g} s, {mode}, for {served}")
    return "\n".join(lines)
