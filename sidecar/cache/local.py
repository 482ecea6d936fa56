"""type: local: entries in this process's memory, bounded in bytes, least recently used out
first, each gone after its ttl. No I/O, so no awaits: a lookup and a store cost a dict
operation each. The clock is injected."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from sidecar.cache.entry import Entry

# Bytes an entry takes beyond the lengths of its key, body and content type (measured with
# tracemalloc: their objects' headers, the tuples, the floats and the dict's slot).
OVERHEAD = 420


class LocalStore:
    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_bytes // 4  # one reply may take a quarter of the room at most
        self.clock = clock
        self.bytes = 0
        # key -> (when it expires, the entry, the bytes it is counted for)
        self._entries: OrderedDict[bytes, tuple[float, Entry, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Entry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return found[1]

    def put(self, key: bytes, entry: Entry, ttl: float) -> None:
        size = len(key) + len(entry.body) + len(entry.content_type) + OVERHEAD
        if size > self.max_entry:
            return
        entries = self._entries
        if key in entries:
            self._drop(key)
        entries[key] = (self.clock() + ttl, entry, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= entries.popitem(last=False)[1][2]  # the least recently used

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key)[2]
