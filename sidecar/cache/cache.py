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
_MARKS = {r: ((CACHE_HEADER, r),) for r in (policy.HIT, policy.MISS, policy.BYPASS)}


class Cache:
    def __init__(self, settings: CacheSettings, store: LocalStore | RedisStore) -> None:
        self.settings = settings
        self.store = store
        # One of the two, so that a lookup in memory needs no await.
        self.local = store if isinstance(store, LocalStore) else None
        self.remote = store if isinstance(store, RedisStore) else None
        self.max_entry = MAX_ENTRY if self.local is None else min(MAX_ENTRY, self.local.max_entry)
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
        # Whose entries: the key's digest, not its name, which a later key may reuse.
        return policy.use(self.settings, endpoint, group, key.digest, body, controls, headers)

    async def hit(self, entry: Entry, reply: Responder, outcome: Outcome) -> None:
        """An entry answers: no upstream call, no tokens."""
        outcome.cache = policy.HIT
        outcome.tokens = 0
        outcome.stream = entry.stream
        await replay(reply, entry, _MARKS[policy.HIT])

    def missed(self, use: policy.Use | None, reply: Responder, outcome: Outcome) -> None:
        """The reply is marked, and copied as it goes when it may be kept."""
        if use is None:
            outcome.cache = policy.BYPASS
        else:
            outcome.cache = policy.MISS
            if use.store:
                reply.tee = Tee(self.max_entry)
        reply.always += _MARKS[outcome.cache]

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
        stream = content_type.startswith("text/event-stream")  # lower case: reply_headers
        if stream and not finished(body):
            return
        entry = Entry(time.time(), stream, content_type, body)
        if self.local is not None:
            self.local.put(use.key, entry, use.ttl)  # at once: no awaits, no task
        else:
            self.keep(use, entry)

    def found(self, use: policy.Use | None, local: LocalStore) -> Entry | None:
        """The entry in memory that answers, found without an await: a coroutine for each
        request would cost more than the lookup."""
        if use is None or not use.read:
            return None
        entry = local.get(use.key)
        return entry if entry is None or use.max_age is None else _fresh(use, entry)

    async def lookup(self, use: policy.Use | None) -> Entry | None:
        """The entry on Redis that answers."""
        remote = self.remote
        if use is None or not use.read or remote is None:
            return None
        return _fresh(use, await remote.get(use.key))

    def keep(self, use: policy.Use, entry: Entry) -> None:
        """Store on Redis in the background, since the client has its reply already and a
        slow Redis must not hold the next request on its connection."""
        if self.remote is not None:
            task = asyncio.get_running_loop().create_task(self.remote.put(use.key, entry, use.ttl))
            self._keeping.add(task)
            task.add_done_callback(self._keeping.discard)

    async def close(self) -> None:
        if self._keeping:
            await asyncio.wait(self._keeping, timeout=1.0)
        if self.remote is not None:
            await self.remote.close()


def _fresh(use: policy.Use, entry: Entry | None) -> Entry | None:
    """The entry, unless the request's s-maxage finds it too old."""
    if entry is not None and use.max_age is not None and time.time() - entry.created > use.max_age:
        return None
    return entry
