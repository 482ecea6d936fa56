"""Fixtures: a fake upstream, sidecars started in-process on 127.0.0.1:0, and real clients."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai
import pytest
from hypothesis import settings

from sidecar import config as configs
from sidecar import server
from tests.fakes import FakeUpstream
from tests.redis_server import RedisServer

# `make test` must pass or fail the same way every time: property tests draw a fixed sequence
# of examples and keep no database between runs. HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@dataclass
class Sidecar:
    running: server.Running
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.running.port}"

    def openai(self, key: str = "unused") -> openai.AsyncOpenAI:
        """The official SDK pointed at the sidecar, as a user would: base_url ending in /v1."""
        client = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)
        self.clients.append(client)
        return client


MakeSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = await FakeUpstream().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def make_sidecar(tmp_path: Path) -> AsyncIterator[MakeSidecar]:
    started: list[Sidecar] = []

    async def make(
        text: str, suffix: str = ".yaml", env: Mapping[str, str] | None = None
    ) -> Sidecar:
        path = tmp_path / f"config{len(started)}{suffix}"
        path.write_text(text)
        config = configs.load(path, environ=dict(env or {}))
        sidecar = Sidecar(await server.start(config, "127.0.0.1", 0))
        started.append(sidecar)
        return sidecar

    yield make
    for sidecar in started:
        for client in sidecar.clients:
            await client.close()
        await sidecar.running.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, for this test alone."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
