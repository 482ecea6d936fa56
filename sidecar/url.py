"""An upstream URL as the table holds it: parsed once at load time with the standard library."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+(%[a-z0-9]+)?")  # a name or an IP (v6 unbracketed)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # what would break the request line or a header


@dataclass(frozen=True, slots=True)
class URL:
    """scheme://host:port/path?query, as written (never re-encoded): the path and query go on
    the request line exactly so."""

    text: str
    scheme: str
    host: str  # lower case, an IPv6 address without its brackets, a non-ASCII name as IDNA
    port: int  # the scheme's default when none is written
    path: str
    query: str
    fragment: str
    user: str | None
    password: str | None

    @classmethod
    def parse(cls, text: str) -> URL:
        """ValueError for what cannot be a URL (a bad port, a broken IPv6 address)."""
        parts = urlsplit(text)
        host = parts.hostname or ""
        if host and not host.isascii():
            host = host.encode("idna").decode("ascii")
        if host and not _HOST.fullmatch(host):
            raise ValueError(f"not a host name: {host!r}")
        if _UNSAFE.search(text):
            raise ValueError("spaces or control characters")
        port = parts.port  # ValueError when out of range or not a number
        if port is None:
            port = DEFAULT_PORTS.get(parts.scheme, 0)
        return cls(
            text,
            parts.scheme,
            host,
            port,
            parts.path,
            parts.query,
            parts.fragment,
            parts.username,
            parts.password,
        )

    @property
    def raw_path_qs(self) -> str:
        """The request target: the path (at least "/") and the query."""
        target = self.path or "/"
        return f"{target}?{self.query}" if self.query else target

    def __str__(self) -> str:
        return self.text
