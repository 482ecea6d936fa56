"""The pooled client session every upstream call goes through."""

from __future__ import annotations

import aiohttp

KEEPALIVE_SECONDS = 60.0  # idle pooled connections are closed after this


def new_session() -> aiohttp.ClientSession:
    """One session per process: keep-alive connections pooled per upstream host.

    - no connection limit here: the sidecar's own limits bound concurrency, and a pool cap
      would queue long-lived streams behind each other;
    - no total timeout (aiohttp's default of 5 minutes would cut long streams): each deployment
      passes its own connect and idle-read limits;
    - replies are relayed as sent, compressed or not, so nothing is decompressed;
    - no cookie jar: a cookie one upstream sets must never ride along on another client's call.
    """
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS, ttl_dns_cache=10
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
    )
