"""The cache as a stage of the request pipeline: may this request use it (use), does an entry
answer it (lookup, then hit), or is its reply marked (missed) and kept (kept). Stores are
`LocalStore` (memory) or `RedisStore`; keeping never delays a reply."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from sidecar.auth import ClientKey
from sidecar.cache import policy
from sidecar.cache.entry import Entry, finished
from sidecar.cache.local import LocalStore
from sidecar.cache.redis_store import RedisStore
from sidecar.cache.replay import replay
from sidecar.config.cache import CacheSettings
from sidecar.headers import CACHE_HEADER
from sidecar.http.message import Responder, Tee
from sidecar.outcome import Outcome
from sidecar.routes import Endpoint

MAX_ENTRY = 8 * 1024 * 1024  # bytes: a larger reply is passed on and not kept


def scope_of(key: ClientKey) -> str:
    """Whose entries these are: the key's digest, not its name, which a later key may reuse."""
    return key.digest.hex()


class Cache:
    def __init__(self, settings: CacheSettings, store: LocalStore | RedisStore) -> None:
        self.settings = settings
        self.store = store
        self.max_entry = (
            min(MAX_ENTRY, store.max_entry) if isinstance(store, LocalStore) else MAX_ENTRY
        )
        self._keeping: set[asyncio.Task[None]] = set()

    def use(
        self,
        endpoint: Endpoint,
        group: str,
        key: ClientKey,
        body: dict[str, Any],
        controls: Any,
        headers: Mapping[str, str],
    ) -> policy.Use | None:
        return policy.use(self.settings, endpoint, group, scope_of(key), body, controls, headers)

    async def hit(self, entry: Entry, reply: Responder, outcome: Outcome) -> None:
        """An entry answers: no upstream call, no tokens."""
        outcome.cache = policy.HIT
        outcome.tokens = 0
        outcome.stream = entry.stream
        await replay(reply, entry, ((CACHE_HEADER, policy.HIT),))

    def missed(self, use: policy.Use | None, reply: Responder, outcome: Outcome) -> None:
        """The reply is marked, and copied as it goes when it may be kept."""
        if use is None:
            outcome.cache = policy.BYPASS
        else:
            outcome.cache = policy.MISS
            if use.store:
                reply.tee = Tee(self.max_entry)
        reply.always += ((CACHE_HEADER, outcome.cache),)

    def kept(self, use: policy.Use, reply: Responder) -> None:
        """A reply that came whole and clean, 200, is kept; a cut stream or an error never."""
        tee = reply.tee
        if not use.store or tee is None or tee.parts is None or not tee.content_type:
            return
        if reply.status != 200 or not reply.done:
            return
        content_type = tee.content_type
        parts = tee.parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        stream = content_type.lower().startswith("text/event-stream")
        if stream and not finished(body):
            return
        entry = Entry(time.time(), stream, content_type, body)
        self.keep(use, entry)

    async def lookup(self, use: policy.Use | None) -> Entry | None:
        if use is None or not use.read:
            return None
        store = self.store
        entry = store.get(use.key) if isinstance(store, LocalStore) else await store.get(use.key)
        if (
            entry is not None
            and use.max_age is not None
            and time.time() - entry.created > use.max_age
        ):
            return None
        return entry

    def keep(self, use: policy.Use, entry: Entry) -> None:
        """Store: in memory at once; on Redis in the background, since the client has its
        reply already and a slow Redis must not hold the next request on its connection."""
        store = self.store
        if isinstance(store, LocalStore):  # no awaits, no task
            store.put(use.key, entry, use.ttl)
            return
        task = asyncio.get_running_loop().create_task(store.put(use.key, entry, use.ttl))
        self._keeping.add(task)
        task.add_done_callback(self._keeping.discard)

    async def close(self) -> None:
        if self._keeping:
            await asyncio.wait(self._keeping, timeout=1.0)
        if isinstance(self.store, RedisStore):
            await self.store.close()
