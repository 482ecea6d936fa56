"""The routing table as text, for --check. Keys appear only as short fingerprints."""

from __future__ import annotations

import hashlib

from sidecar.config import Config
from sidecar.routes import Endpoint


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def describe(config: Config) -> str:
    lines = [f"{config.path}: OK, {len(config.deployments)} deployments"]
    for d in config.deployments:
        if d.mock_response is not None:
            target = "mock_response"
        else:
            target = " ".join(str(d.urls[e]) for e in Endpoint if e in d.urls)
        auth = next(
            (v for k, v in d.headers.items() if k.lower() in ("authorization", "api-key")), None
        )
        key = fingerprint(auth.removeprefix("Bearer ")) if auth else "no key"
        lines.append(f"  {d.group} -> {d.provider}/{d.model} [{d.id}] {target} ({key})")
    master = fingerprint(config.master_key) if config.master_key else "none (open)"
    lines.append(f"master_key: {master}")
    return "\n".join(lines)
