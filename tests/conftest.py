"""Fixtures shared by the whole suite: a real Redis-protocol server per session, wiped per
test, and simnet nodes of either lnd generation."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from simnet import Personality, SimNode

from lndmailbox.store import RedisServer
from lndmailbox.store.client import RedisClient, connect
from tests.http_endpoint import MakeEndpoint, endpoints
from tests.redis_topologies import LocalCluster, SentinelGroup, running


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
def rng() -> random.Random:
    """A seeded random source for a test; the seed is printed (shown with -s, or on failure)."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    return random.Random(seed)


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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Cluster of 3 primaries and 3 replicas for the whole session (a failover test
    leaves it as it found it: 3 primaries, each with a replica in sync)."""
    cluster = LocalCluster(Path(tmp_path_factory.mktemp("cluster")))
    with running(cluster):
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    """A primary, a replica and 3 sentinels for the whole session."""
    group = SentinelGroup(Path(tmp_path_factory.mktemp("sentinel")))
    with running(group):
        yield group


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """The session's Cluster, healthy (a failover test before may still be settling) and
    emptied before each test."""
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def sentinel_url(redis_sentinel: SentinelGroup) -> str:
    """The session's Sentinel group, emptied before each test."""
    redis_sentinel.flush()
    return redis_sentinel.url


@pytest.fixture(params=["server", "cluster"])
def server_or_cluster_url(request: pytest.FixtureRequest) -> str:
    """The session's server, then its Cluster, emptied first."""
    if request.param == "cluster":
        url: str = request.getfixturevalue("cluster_url")
        return url
    server: RedisServer = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
    return server.url


@pytest.fixture
async def server_or_cluster(server_or_cluster_url: str) -> AsyncIterator[RedisClient]:
    """A client on the session's server, then on its Cluster: a module whose tests should
    hold on both names it ``redis_client``."""
    client = connect(server_or_cluster_url, max_connections=16)
    yield client
    await client.aclose()
