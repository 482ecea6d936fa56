"""sidecar_settings: ours. Listeners, processes, limits on the wire, logging, reload."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.config.values import seconds
from sidecar.deployment import ConfigError

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """sidecar_settings: ours. Command-line flags win over these."""

    host: str = "0.0.0.0"
    port: int = 4000
    workers: int = 1  # "auto" in the file: one per core
    uds: str | None = None  # also listen on this Unix socket path; None: TCP only
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # a larger body gets 413; 0 means no limit
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT  # seconds in-flight requests get on SIGTERM
    access_log: bool = True  # one JSON line per request on stdout
    metrics: bool = True  # Prometheus metrics on /metrics; false: not kept, and /metrics is 404
    max_connections: int = 0  # client connections held at once; more get 503; 0: no limit
    max_in_flight: int = 0  # model requests served at once; more get 503; 0: no limit
    body_timeout: float = 60.0  # seconds a client may take to send its body; then 408
    reload_interval: float = 1.0  # seconds between checks of the file for changes; 0: SIGHUP only
    # A second listener for health and metrics only, never behind a key or the connection
    # limit: what a kubelet probes from the node while the API stays on the pod's loopback.
    # None: no such listener (health and metrics are on the API's listener too, always).
    admin_port: int | None = None
    admin_host: str = "0.0.0.0"


def server_settings(raw: Mapping[str, Any]) -> ServerSettings:
    values: dict[str, Any] = {}
    types: dict[str, tuple[type, ...]] = {
        "host": (str,),
        "port": (int,),
        "workers": (int,),
        "uds": (str,),
        "max_request_bytes": (int,),
        "drain_timeout": (int, float),
        "access_log": (bool,),
        "metrics": (bool,),
        "reload_interval": (int, float),
        "max_connections": (int,),
        "max_in_flight": (int,),
        "body_timeout": (int, float),
        "admin_port": (int,),
        "admin_host": (str,),
    }
    for key, value in raw.items():
        path = f"sidecar_settings.{key}"
        if key not in types:
            raise ConfigError(path, f"unknown key (known: {', '.join(types)})")
        if key == "workers" and value == "auto":
            value = workers_auto()
        if not isinstance(value, types[key]) or (
            isinstance(value, bool) and bool not in types[key]
        ):
            raise ConfigError(path, f"must be {types[key][0].__name__}")
        values[key] = value
    for name in ("reload_interval", "max_connections", "max_in_flight"):
        if values.get(name, 0) < 0:
            raise ConfigError(f"sidecar_settings.{name}", "must not be negative")
    if "body_timeout" in values:
        values["body_timeout"] = seconds(values["body_timeout"], "sidecar_settings.body_timeout")
    for name in ("port", "admin_port"):
        if not 0 <= values.get(name, 0) <= 65535:
            raise ConfigError(f"sidecar_settings.{name}", "must be 0..65535")
    # Checked here when the file sets both; the command line checks what --port makes of it.
    if values.get("admin_port") not in (None, 0) and values["admin_port"] == values.get("port"):
        # With workers both listeners would join one SO_REUSEPORT group: the kernel would
        # send API calls to the admin listener, which answers them 404.
        raise ConfigError("sidecar_settings.admin_port", "must differ from port")
    if values.get("workers", 1) < 1:
        raise ConfigError("sidecar_settings.workers", "must be at least 1")
    if values.get("max_request_bytes", 0) < 0:
        raise ConfigError("sidecar_settings.max_request_bytes", "must not be negative")
    if values.get("drain_timeout", 0) < 0:
        raise ConfigError("sidecar_settings.drain_timeout", "must not be negative")
    return ServerSettings(**values)


# What a running process cannot change without a restart: its sockets and its processes, and
# whether it keeps metrics (the counters are made at start).
_LISTENING = ("host", "port", "workers", "uds", "admin_port", "admin_host", "metrics")


def restart_needed(old: ServerSettings, new: ServerSettings) -> list[str]:
    """The sidecar_settings a reload changed that take effect only on restart."""
    return [f"sidecar_settings.{k}" for k in _LISTENING if getattr(old, k) != getattr(new, k)]


def workers_auto() -> int:
    """One worker per core this process may use: the cores it may run on, and no more than its
    container's CPU limit (cgroup v2 `cpu.max`), which Kubernetes sets from `limits.cpu`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)
