"""The connection to Redis: redis-py's asyncio client, one pool per process, short timeouts,
no retries of its own (the next sync is the retry), scripts run by their SHA1 with a fallback
to EVAL where EVALSHA is refused (a managed Redis that renames or forbids it)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine
from typing import Any

from sidecar.config import SharedSettings
from sidecar.redact import redact_text

TIMEOUT = 0.25  # seconds for a connection, and for a whole command
POOL = 16  # connections at most: the sync's and, with sync_interval 0, the admissions'


class RedisDown(Exception):
    """Redis did not answer in time, or answered with an error; the message is safe to log."""


class Link:
    def __init__(self, settings: SharedSettings, connections: int = POOL) -> None:
        # The optional extra: imported only when a Redis is configured.
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import NoScriptError, RedisError, ResponseError

        self.settings = settings
        self.errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._response = ResponseError
        self._missing = NoScriptError
        tls: dict[str, Any] = {"connection_class": aioredis.SSLConnection} if settings.tls else {}
        pool = aioredis.BlockingConnectionPool(
            host=settings.host,
            port=settings.port,
            db=settings.db,
            username=settings.username,
            password=settings.password,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            max_connections=connections,
            timeout=TIMEOUT,  # waiting for a free connection
            # No client_name: CLIENT SETNAME on every connection, which an ACL may deny.
            **tls,
        )
        self.client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        self.eval_only = False  # EVALSHA was refused: send the scripts whole

    async def run(self, script: str, args: list[Any]) -> Any:
        """Run a script; RedisDown when Redis is away, slow or refuses it."""
        return await self._bounded(self._run(script, args))

    async def command(self, *args: Any) -> Any:
        """One command (the cache's GET and SET); RedisDown as for run()."""
        return await self._bounded(self.client.execute_command(*args))  # type: ignore[no-untyped-call]

    async def _bounded(self, call: Coroutine[Any, Any, Any]) -> Any:
        try:
            async with asyncio.timeout(TIMEOUT * 2):
                return await call
        except TimeoutError:
            raise RedisDown(f"no answer within {TIMEOUT * 2:g} s") from None
        except self.errors as exc:
            text = redact_text(str(exc) or type(exc).__name__, self.settings.secrets)
            raise RedisDown(f"{type(exc).__name__}: {text}") from None

    async def _run(self, script: str, args: list[Any]) -> Any:
        if not self.eval_only:
            sha = _sha(script)
            try:
                return await self.client.evalsha(sha, 0, *args)
            except self._missing:
                pass  # not loaded (a new or restarted Redis): EVAL loads it for next time
            except self._response as exc:
                if not _refused(exc):
                    raise
                self.eval_only = True
        return await self.client.eval(script, 0, *args)

    async def close(self) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                await self.client.aclose()
        except TimeoutError:
            pass
        except self.errors:
            pass


def _sha(script: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - a deliberate memo
    sha = cache.get(script)
    if sha is None:
        sha = cache[script] = hashlib.sha1(script.encode()).hexdigest()
    return sha


def _refused(exc: Exception) -> bool:
    """EVALSHA itself is not allowed: renamed away (unknown command) or denied by an ACL."""
    text = str(exc).lower()
    return "unknown command" in text or "noperm" in text or "no permission" in text
