"""type: redis: entries on the Redis every replica reads, so a reply made by one answers all.

A lookup is the one Redis round trip the cache puts on a request's path. When Redis is away
(down, slow, refusing) the lookup misses and the store is skipped: the cache never fails a
request, holds one at most LOOKUP_TIMEOUT, and after a failure does not ask again for a
second, so a dead Redis costs nothing per request.
"""

from __future__ import annotations

import asyncio
import time

from sidecar.cache.entry import Entry
from sidecar.shared.link import Link, RedisDown

QUIET = 1.0  # seconds without asking Redis after it failed
# A lookup waits at most this long, connection from the pool included: a frozen Redis costs
# the requests of that moment this much, once a second, and no other request anything. Short
# enough for that, long enough for a herd of lookups of a large entry on a healthy Redis.
LOOKUP_TIMEOUT = 0.25
CONNECTIONS = 64  # the cache's own pool: lookups come with requests, many at once


class RedisStore:
    def __init__(self, link: Link, namespace: str) -> None:
        self.link = link
        self.prefix = f"{namespace}:cache:"
        self.down_until = 0.0  # time.monotonic(): until then, no lookups

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    async def get(self, key: bytes) -> Entry | None:
        """`key`: policy.key's digest kind, "#" and 32 bytes; named on Redis in hex."""
        if not self.up:
            return None
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                data = await self.link.command("GET", self.prefix + key[1:].hex())
        except (RedisDown, TimeoutError):
            self.down_until = time.monotonic() + QUIET
            return None
        return None if data is None else Entry.decode(data)

    async def put(self, key: bytes, entry: Entry, ttl: float) -> None:
        if not self.up:
            return
        try:
            await self.link.command(
                "SET", self.prefix + key[1:].hex(), entry.encode(), "PX", max(1, int(ttl * 1000))
            )
        except RedisDown:
            self.down_until = time.monotonic() + QUIET

    async def close(self) -> None:
        await self.link.close()
