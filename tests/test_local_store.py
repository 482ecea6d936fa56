"""The in-memory store (sidecar/cache/local.py): what it returns, what it forgets first, and
that it never returns anything but what was put under that key."""

from __future__ import annotations

import random

from sidecar.cache.entry import Entry
from sidecar.cache.local import LocalStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(body: bytes, stream: bool = False) -> Entry:
    return Entry(123.5, stream, "text/event-stream" if stream else "application/json", body)


def test_an_entry_comes_back_as_it_was_put() -> None:
    store = LocalStore(1 << 16)
    store.put(b"=a", entry(b'{"x": 1}'), 60)
    store.put(b"=b", entry(b"data: [DONE]\n\n", stream=True), 60)
    assert store.get(b"=a") == entry(b'{"x": 1}')
    assert store.get(b"=b") == entry(b"data: [DONE]\n\n", stream=True)
    assert store.get(b"=c") is None
    assert len(store) == 2


def test_an_entry_is_gone_after_its_ttl() -> None:
    clock = Clock()
    store = LocalStore(1 << 16, clock)
    store.put(b"=a", entry(b"1"), 10)
    clock.now += 9.9
    assert store.get(b"=a") is not None
    clock.now += 0.2
    assert store.get(b"=a") is None
    assert len(store) == 0 and store.bytes == 0


def test_a_key_put_again_answers_with_the_newer_entry() -> None:
    store = LocalStore(1 << 16)
    store.put(b"=a", entry(b"old"), 60)
    store.put(b"=a", entry(b"new"), 60)
    assert store.get(b"=a") == entry(b"new")
    assert len(store) == 1


def test_an_entry_over_a_quarter_of_the_room_is_not_kept() -> None:
    store = LocalStore(4096)
    store.put(b"=big", entry(b"x" * 1100), 60)
    assert store.get(b"=big") is None
    store.put(b"=small", entry(b"x" * 500), 60)
    assert store.get(b"=small") is not None


def test_the_oldest_go_first_and_the_bound_holds() -> None:
    store = LocalStore(8192)
    for i in range(100):
        store.put(b"=%d" % i, entry(b"x" * 200), 60)
        assert store.bytes <= 8192
    assert store.get(b"=99") is not None
    assert store.get(b"=0") is None
    kept = [i for i in range(100) if store.get(b"=%d" % i) is not None]
    assert kept == list(range(kept[0], 100))  # whatever remains is the newest, in a run


def test_an_entry_that_is_read_stays() -> None:
    store = LocalStore(8192)
    store.put(b"=hot", entry(b"h" * 100), 60)
    for i in range(500):  # many times the room
        store.put(b"=%d" % i, entry(b"x" * 200), 60)
        assert store.get(b"=hot") == entry(b"h" * 100)
    assert store.get(b"=0") is None


def test_whatever_it_returns_is_what_was_last_put_under_that_key() -> None:
    """Random keys, sizes, ttls and reads, many times what a small store holds: a read
    returns the entry last put for its key or nothing, and the bound holds throughout."""
    rng = random.Random(7)
    clock = Clock()
    store = LocalStore(16384, clock)
    last: dict[bytes, Entry] = {}
    for step in range(20_000):
        key = b"=%d" % rng.randrange(300)
        if rng.random() < 0.5:
            body = bytes([rng.randrange(256)]) * rng.randrange(0, 3000)
            put = Entry(float(step), rng.random() < 0.3, rng.choice(["a/b", "c/d; q=1"]), body)
            store.put(key, put, rng.choice([5, 1000]))
            last[key] = put
        else:
            got = store.get(key)
            assert got is None or got == last[key]
        clock.now += 0.01
        assert 0 <= store.bytes <= 16384
    assert any(store.get(k) is not None for k in last)
