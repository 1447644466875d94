"""Fixtures shared by the whole suite: a real Redis-protocol server per session, wiped per
test, and simnet nodes of either lnd generation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from simnet import Personality, SimNode

from lndmailbox.store import RedisServer
from tests.http_endpoint import MakeEndpoint, endpoints


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real server process on a free loopback port for the whole session."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    """The session's server, emptied before each test."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def endpoint() -> AsyncIterator[MakeEndpoint]:
    """Makes real local HTTP endpoints (see tests/http_endpoint.py); closes them after."""
    async for make in endpoints():
        yield make


@pytest.fixture(params=list(Personality), ids=lambda p: p.value)
def personality(request: pytest.FixtureRequest) -> Personality:
    """Each lnd generation in turn."""
    value: Personality = request.param
    return value


@pytest.fixture
async def node(personality: Personality) -> AsyncIterator[SimNode]:
    async with SimNode(personality) as sim:
        yield sim


@pytest.fixture
async def node20() -> AsyncIterator[SimNode]:
    async with SimNode(Personality.LND_0_20) as sim:
        yield sim


@pytest.fixture
async def node21() -> AsyncIterator[SimNode]:
    async with SimNode(Personality.LND_0_21) as sim:
        yield sim
