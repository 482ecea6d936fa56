"""The cache as the request pipeline sees it: may this request use it, is there an entry, keep
this reply. Stores are `LocalStore` (memory) or `RedisStore`; keeping never delays a reply."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

from sidecar.cache import policy
from sidecar.cache.entry import Entry
from sidecar.config.cache import CacheSettings
from sidecar.routes import Endpoint

MAX_ENTRY = 8 * 1024 * 1024  # bytes: a larger reply is passed on and not kept


class Store(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, ttl: float) -> None: ...


class Cache:
    def __init__(self, settings: CacheSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.max_entry = min(MAX_ENTRY, getattr(store, "max_entry", MAX_ENTRY))
        self._keeping: set[asyncio.Task[None]] = set()

    def use(
        self,
        endpoint: Endpoint,
        group: str,
        scope: str,
        body: dict[str, Any],
        controls: Any,
        headers: Mapping[str, str],
    ) -> policy.Use | None:
        return policy.use(self.settings, endpoint, group, scope, body, controls, headers)

    async def lookup(self, use: policy.Use) -> Entry | None:
        if not use.read:
            return None
        entry = await self.store.get(use.key)
        if (
            entry is not None
            and use.max_age is not None
            and time.time() - entry.created > use.max_age
        ):
            return None
        return entry

    def keep(self, use: policy.Use, entry: Entry) -> None:
        """Store in the background: the client has its reply already, and a slow Redis must
        not hold the next request on its connection."""
        task = asyncio.get_running_loop().create_task(self.store.put(use.key, entry, use.ttl))
        self._keeping.add(task)
        task.add_done_callback(self._keeping.discard)

    async def close(self) -> None:
        if self._keeping:
            await asyncio.wait(self._keeping, timeout=1.0)
        closer = getattr(self.store, "close", None)
        if closer is not None:
            await closer()
