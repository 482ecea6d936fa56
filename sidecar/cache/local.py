"""type: local: entries in this process's memory, bounded in bytes, least recently used out
first, each gone after its ttl. No I/O, so no awaits: a lookup and a store cost a dict
operation each. The clock is injected."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from sidecar.cache.entry import Entry


class LocalStore:
    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_bytes // 4  # one reply may take a quarter of the room at most
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, Entry]] = (
            OrderedDict()
        )  # key -> (expires, entry)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, entry = found
        if expires <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry, ttl: float) -> None:
        size = entry.size
        if size > self.max_entry:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self.clock() + ttl, entry)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, entry = self._entries.pop(key)
        self.bytes -= entry.size
