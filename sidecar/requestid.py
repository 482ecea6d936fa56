"""Request ids: the client's X-Request-Id when it is a sane one, else one made here.

Made ids are UUIDs (version 4 layout), because strict upstreams validate the header:
llama-cpp-python's server (starlette-context's RequestIdPlugin) answers an empty 400 to any
X-Request-Id that Python's uuid.UUID() cannot parse, which was every call through the sidecar
while its ids were `<hex>-<counter>`. Envoy makes UUIDs too, and nginx's $request_id is 32 hex
digits, which parses as one. Each process draws a random 64-bit prefix; a 48-bit counter makes
each id, so an id costs one string format and no system call.
"""

from __future__ import annotations

import itertools
import os
import secrets

MAX_GIVEN = 128  # characters of a client's id we keep: it goes into a header and the log


def _prefix() -> str:
    """The first four groups, version 4 and RFC 9562's variant bits set: 62 random bits."""
    bits = secrets.randbits(64)
    high = f"{bits >> 16:012x}"  # 48 bits: the first two groups
    third = 0x4000 | (bits >> 4 & 0x0FFF)  # version 4 and 12 random bits
    fourth = 0x8000 | (bits & 0xF) << 10 | secrets.randbits(10)  # variant 10, 14 random bits
    return f"{high[:8]}-{high[8:12]}-{third:04x}-{fourth:04x}-"


_PREFIX = _prefix()
_counter = itertools.count(secrets.randbits(47))


def _new_process() -> None:
    """Workers are forked from one supervisor: each draws its own prefix, or ids would repeat."""
    global _PREFIX, _counter
    _PREFIX = _prefix()
    _counter = itertools.count(secrets.randbits(47))


os.register_at_fork(after_in_child=_new_process)


def make() -> str:
    return f"{_PREFIX}{next(_counter) & 0xFFFFFFFFFFFF:012x}"


def take(given: str | None) -> str:
    """The client's id when it is printable ASCII of at most MAX_GIVEN characters (returned
    to it and logged; upstreams get ids of their own), else a new one."""
    if given and len(given) <= MAX_GIVEN and given.isascii() and given.isprintable():
        return given
    return make()
