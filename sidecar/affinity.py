"""Which deployment made a Responses API response, so that a request continuing it
(`previous_response_id`) goes where that response is stored: vLLM and llama.cpp keep a
conversation's state in the server that answered, and another one knows nothing of the id.

Remembered in this process (bounded, the least recently used forgotten first) and, with the
shared state configured, on Redis, so that every replica knows every id. A Redis that is away
costs a lookup at most the link's timeout, and the request is routed as any other.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict

from sidecar.http.message import Tee
from sidecar.shared.link import Link, RedisDown

log = logging.getLogger("sidecar")

LIMIT = 100_000  # ids remembered in the process
REDIS_TTL = 24 * 3600  # seconds an id is remembered on Redis
QUIET = 1.0  # seconds without asking Redis after it failed (and one log line for it)
# A lookup waits at most this long: a frozen Redis costs a continuation that much, once per
# QUIET, and the request is then routed as any other.
LOOKUP_TIMEOUT = 0.1
# A response's id is its object's first field (OpenAI, vLLM, llama.cpp); a stream's first
# event, response.created, carries the response.
# Ids are opaque: LiteLLM's are some 500 characters of base64.
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,2048})"')


HEAD = 8192  # bytes of a reply kept to find its id in


class FirstPart(Tee):
    """Keeps the start of a reply's body, where a response's id is (a stream may begin with a
    comment, or its first event come in pieces)."""

    __slots__ = ()
    whole = False

    def __init__(self) -> None:
        super().__init__(HEAD)

    def add(self, data: bytes) -> None:
        parts = self.parts
        if parts is not None and self.size < HEAD:
            self.size += len(data)
            parts.append(data)


def response_id(tee: Tee | None) -> str | None:
    """The id in the reply's first piece, as `tee` kept it."""
    if tee is None or not tee.parts:
        return None
    found = _ID.search(b"".join(tee.parts), 0, HEAD)
    return found.group(1).decode("utf-8", "replace") if found else None


class Affinity:
    def __init__(self, link: Link | None = None, namespace: str = "sidecar") -> None:
        self._known: OrderedDict[str, str] = OrderedDict()  # response id -> deployment id
        self.link = link
        self.prefix = f"{namespace}:response:"
        self.down_until = 0.0  # time.monotonic(): until then, Redis is not asked
        self._storing: set[asyncio.Task[None]] = set()

    def remember(self, response: str, deployment: str) -> None:
        self._keep(response, deployment)
        if self.link is not None:
            task = asyncio.get_running_loop().create_task(self._store(response, deployment))
            self._storing.add(task)
            task.add_done_callback(self._storing.discard)

    async def where(self, response: str) -> str | None:
        """The deployment that made `response`, when it is known here or on Redis."""
        found = self._known.get(response)
        if found is not None:
            self._known.move_to_end(response)
            return found
        if self.link is None or time.monotonic() < self.down_until:
            return None
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                value = await self.link.command("GET", self.prefix + response)
        except (RedisDown, TimeoutError) as exc:
            self._down(exc)
            return None
        if value is None:
            return None
        found = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        self._keep(response, found)
        return found

    def _keep(self, response: str, deployment: str) -> None:
        known = self._known
        known[response] = deployment
        known.move_to_end(response)
        while len(known) > LIMIT:
            known.popitem(last=False)

    async def _store(self, response: str, deployment: str) -> None:
        assert self.link is not None
        if time.monotonic() < self.down_until:
            return
        try:
            await self.link.command("SET", self.prefix + response, deployment, "EX", REDIS_TTL)
        except RedisDown as exc:
            self._down(exc)

    def _down(self, exc: Exception) -> None:
        if time.monotonic() >= self.down_until:
            why = str(exc) or f"no answer within {LOOKUP_TIMEOUT:g} s"
            log.warning("response affinity: Redis is away (%s); ids known here only", why)
        self.down_until = time.monotonic() + QUIET

    async def close(self) -> None:
        if self._storing:
            await asyncio.wait(self._storing, timeout=1.0)
        if self.link is not None:
            await self.link.close()
