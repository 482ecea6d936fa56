"""Where an upstream's connections go, and how a call to it fails: values that the routing
table and the error mapping (the core) share with the connection pool (the edge), so that the
core imports nothing of the edge."""

from __future__ import annotations

from typing import NamedTuple


class UpstreamError(Exception):
    """The upstream could not be reached, broke the exchange, or was too slow."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "connect", "tls", "timeout", "closed", "cut" or "protocol"


class Origin(NamedTuple):
    """Where connections go: scheme, host and port, and TLS settings for https. (A tuple:
    the pool looks connections up by it, and a tuple hashes in C.)"""

    host: str
    port: int
    tls: bool

    @property
    def authority(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"
