"""The writes that matter wait for the replica (WAIT / WAITAOF), on a real primary and replica.

Two valkey-server processes per test: a primary and a replica of it (REPLICAOF). A replica
frozen with SIGSTOP neither reads the replication stream nor acknowledges it, so a wait
cannot be confirmed while it is stopped; a replica pointed at a port where nothing listens
has left the primary and holds nothing written after that. The same on the session's
Cluster (3 primaries, 3 replicas; tests/redis_topologies.py): the wait goes to the shard of
the node's keys, and what it confirmed survives that shard's primary being killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from simnet import Personality

from lndmailbox.config import Settings
from lndmailbox.errors import StoreUnavailableError
from lndmailbox.store import (
    DurableWrites,
    NewEntry,
    PutStatus,
    RedisServer,
    ReplicaWait,
    Store,
    durability,
    free_port,
    replica_wait_for,
)
from tests.daemon_harness import stored_count, wait_until, world
from tests.redis_topologies import LocalCluster, Process, SentinelGroup
from tests.store_helpers import put_one
from tests.test_mailbox_observability import scrape

NOW = 1_700_000_000.0
NODE = bytes.fromhex("02" + "33" * 32)
SENDER = bytes.fromhex("03" + "44" * 32)
PATH_KEY = bytes.fromhex("02" + "55" * 32)
LONG = ReplicaWait(replicas=None, timeout=60.0)
"""Auto, with a timeout no test reaches: a write returns once the replica holds it."""


def peer(n: int) -> bytes:
    return bytes.fromhex("02" + f"{n:02x}" * 32)


def onion(n: int) -> bytes:
    return bytes([n]) * 1366


@dataclass
class Pair:
    primary: RedisServer
    replica: RedisServer
    primary_client: aioredis.Redis
    replica_client: aioredis.Redis

    def store(self, wait: ReplicaWait) -> Store:
        return Store(self.primary_client, NODE, wait=wait)

    @contextlib.contextmanager
    def replica_frozen(self) -> Iterator[None]:
        assert self.replica.pid is not None
        os.kill(self.replica.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.replica.pid, signal.SIGCONT)

    async def fail_over(self) -> Store:
        """Kills the primary (SIGKILL) and promotes the replica; a store on it."""
        self.primary.kill()
        await self.replica_client.replicaof("NO", "ONE")
        return Store(self.replica_client, NODE)


async def _until(check: object, what: str) -> None:
    """Polls ``check`` (an async callable) until it holds; setup, not a measurement."""
    for _ in range(500):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def _replicas_of(client: aioredis.Redis) -> int:
    return int((await client.info("replication"))["connected_slaves"])


@contextlib.asynccontextmanager
async def _pair(tmp_path: Path, *, persist: bool = False) -> AsyncIterator[Pair]:
    with (
        RedisServer(tmp_path / "primary", persist=persist) as primary,
        RedisServer(tmp_path / "replica", persist=persist) as replica,
    ):
        primary_client = aioredis.Redis.from_url(primary.url)
        replica_client = aioredis.Redis.from_url(replica.url)
        try:
            # Not the default 5 s a primary waits for more replicas before a full sync.
            await primary_client.config_set("repl-diskless-sync-delay", 0)
            await replica_client.replicaof("127.0.0.1", primary.port)

            async def linked() -> bool:
                info = await replica_client.info("replication")
                return bool(info.get("master_link_status") == "up") and (
                    await _replicas_of(primary_client) == 1
                )

            await _until(linked, "the replica follows the primary")
            yield Pair(primary, replica, primary_client, replica_client)
        finally:
            await primary_client.aclose()
            await replica_client.aclose()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    async with _pair(tmp_path) as p:
        yield p


async def _commands(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_a_put_returns_only_once_the_replica_holds_it(pair: Pair) -> None:
    store = pair.store(LONG)
    with pair.replica_frozen():
        put = asyncio.ensure_future(put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW))
        # Nothing the replica does can answer the wait while it is stopped.
        await asyncio.sleep(0.5)
        assert not put.done()
    result = await put
    assert result.status is PutStatus.STORED
    assert store.durable.short == 0
    # No polling: the replica held it before the put returned.
    on_replica = await Store(pair.replica_client, NODE).queues.messages(peer(1))
    assert [m.id for m in on_replica] == [result.message_id]


async def test_every_write_that_matters_waits_and_a_short_wait_is_counted(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    store = pair.store(ReplicaWait(replicas=1, timeout=0.05))
    shorts: list[None] = []
    store.durable.on_short = lambda: shorts.append(None)
    caplog.set_level(logging.INFO, logger="lndmailbox.store.durability")
    with pair.replica_frozen():
        await store.journal.write([NewEntry("e1", SENDER, PATH_KEY, onion(1), NOW)], decided=["e0"])
        first = await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        second = await put_one(store, peer(1), SENDER, PATH_KEY, onion(2), NOW)
        assert first.message is not None
        assert second.message is not None
        # Reads wait for nothing.
        ready, _ = await store.queues.peek(peer(1), NOW, limit=2)
        assert [m.id for m in ready] == [first.message_id, second.message_id]
        assert store.durable.short == 3
        assert await store.queues.move_delivered([first.message], sent_ms=1) == 1
        assert await store.queues.confirm(peer(1), [(first.message_id, 1)])
        assert await store.queues.remove(second.message)
        # Each write stood on the primary: journal, two puts, delivered, confirmed, removed.
        assert store.durable.short == 6
        assert len(shorts) == 6
    assert [e.entry for e in await store.journal.pending()] == ["e1"]
    assert await store.queues.held(peer(1)) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "0 of 1 replicas within 50 ms" in warnings[0].getMessage()
    # The replica is back: the next write is confirmed, and the log says so once.
    await put_one(store, peer(2), SENDER, PATH_KEY, onion(3), NOW)
    assert store.durable.short == 6
    back = [r for r in caplog.records if "working again" in r.getMessage()]
    assert [r.levelno for r in back] == [logging.INFO]
    assert "6 failures" in back[0].getMessage()


async def test_auto_waits_for_nobody_on_a_primary_without_replicas(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await _replicas_of(client) == 0
        auto = Store(client, NODE, wait=ReplicaWait(replicas=None, timeout=60.0))
        result = await put_one(auto, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        assert result.status is PutStatus.STORED
        await auto.journal.write([NewEntry("e1", SENDER, PATH_KEY, onion(1), NOW)])
        assert "wait" not in await _commands(client)
        assert auto.durable.short == 0
        # A count given outright is waited for even so, and comes back short.
        one = Store(client, NODE, wait=ReplicaWait(replicas=1, timeout=0.02))
        await put_one(one, peer(1), SENDER, PATH_KEY, onion(2), NOW)
        assert (await _commands(client))["wait"] == 1
        assert one.durable.short == 1
    finally:
        await client.aclose()


async def test_what_the_replica_confirmed_survives_a_failover_and_nothing_else_does(
    pair: Pair,
) -> None:
    waited = pair.store(LONG)
    kept = await put_one(waited, peer(1), SENDER, PATH_KEY, onion(1), NOW)
    await waited.journal.write([NewEntry("kept", SENDER, PATH_KEY, onion(1), NOW)])
    assert waited.durable.short == 0

    # The replica leaves the primary (it follows a port where nothing listens), which goes
    # on acknowledging writes as before.
    await pair.replica_client.replicaof("127.0.0.1", free_port())
    await _until(lambda: _no_replicas(pair.primary_client), "the primary has no replica")
    unwaited = pair.store(ReplicaWait(replicas=0))
    lost = await put_one(unwaited, peer(2), SENDER, PATH_KEY, onion(2), NOW)
    told = pair.store(ReplicaWait(replicas=1, timeout=0.05))
    lost_but_counted = await put_one(told, peer(3), SENDER, PATH_KEY, onion(3), NOW)
    assert lost.status is lost_but_counted.status is PutStatus.STORED

    promoted = await pair.fail_over()
    assert [m.id for m in await promoted.queues.messages(peer(1))] == [kept.message_id]
    assert [e.entry for e in await promoted.journal.pending()] == ["kept"]
    # Acknowledged by the primary and gone: without a wait nothing said so; with one,
    # the write was counted.
    assert await promoted.queues.messages(peer(2)) == []
    assert await promoted.queues.messages(peer(3)) == []
    assert unwaited.durable.short == 0
    assert told.durable.short == 1


async def _no_replicas(client: aioredis.Redis) -> bool:
    return await _replicas_of(client) == 0


async def test_waitaof_waits_for_both_files_to_sync(tmp_path: Path) -> None:
    async with _pair(tmp_path, persist=True) as pair:
        store = pair.store(ReplicaWait(replicas=None, timeout=60.0, aof=True))
        await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        assert (await _commands(pair.primary_client)).get("waitaof", 0) >= 1
        assert store.durable.short == 0
        short = pair.store(ReplicaWait(replicas=None, timeout=0.05, aof=True))
        with pair.replica_frozen():
            await put_one(short, peer(1), SENDER, PATH_KEY, onion(2), NOW)
        assert short.durable.short == 1


async def test_waitaof_without_an_append_only_file_is_counted_not_failed(pair: Pair) -> None:
    store = pair.store(ReplicaWait(replicas=None, timeout=0.05, aof=True))
    result = await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
    assert result.status is PutStatus.STORED
    assert store.durable.short == 1


async def test_a_script_redis_lost_is_loaded_again_and_run_once(pair: Pair) -> None:
    store = pair.store(LONG)
    await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
    await pair.primary_client.script_flush()
    await put_one(store, peer(1), SENDER, PATH_KEY, onion(2), NOW)
    assert len(await store.queues.messages(peer(1))) == 2
    assert store.durable.short == 0


def test_the_settings_name_the_wait() -> None:
    assert replica_wait_for(Settings()) == ReplicaWait(replicas=None, timeout=0.1, aof=False)
    wait = replica_wait_for(
        Settings(redis_wait_replicas=2, redis_wait_timeout=0.25, redis_wait_aof=True)
    )
    assert wait == ReplicaWait(replicas=2, timeout=0.25, aof=True)
    assert wait.timeout_ms == 250
    assert ReplicaWait(replicas=0).off
    assert not ReplicaWait(replicas=0, aof=True).off


def _replica_of(cluster: LocalCluster, primary: Process) -> Process:
    for node in cluster.nodes:
        if node.running and node is not primary:
            with node.client() as c:
                info = c.info("replication")
            if info.get("role") == "slave" and int(info["master_port"]) == primary.port:
                return node
    raise AssertionError(f"no replica of {primary.port}")


def _calls(node: Process, command: str) -> int:
    with node.client() as c:
        return int(c.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def _wait_calls(node: Process) -> int:
    return _calls(node, "wait")


async def test_on_a_cluster_the_wait_goes_to_the_shard_of_the_keys(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    store = Store.from_url(cluster_url, NODE, wait=LONG)
    try:
        primary = redis_cluster.primary_for(store.keys.mail_key)
        replica = _replica_of(redis_cluster, primary)
        others = [n for n in redis_cluster.primaries() if n is not primary]
        before = {n.port: _wait_calls(n) for n in [primary, *others]}
        result = await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        await store.journal.write([NewEntry("e1", SENDER, PATH_KEY, onion(1), NOW)])
        assert store.durable.short == 0
        assert _wait_calls(primary) >= before[primary.port] + 2
        assert [_wait_calls(n) for n in others] == [before[n.port] for n in others]
        # No polling: the shard's replica held it when the put returned.
        with replica.client() as c:
            c.execute_command("READONLY")
            assert c.llen(store.keys.queue_key(peer(1))) == 1
        # The shard's replica frozen (well within the cluster's node timeout, so that
        # nobody takes it for failed): the wait comes back short and is counted.
        short = Store.from_url(cluster_url, NODE, wait=ReplicaWait(replicas=None, timeout=0.05))
        try:
            await put_one(short, peer(1), SENDER, PATH_KEY, onion(2), NOW)  # auto looks
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                await put_one(short, peer(1), SENDER, PATH_KEY, onion(3), NOW)
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            assert short.durable.short == 1
        finally:
            await short.aclose()
        assert result.status is PutStatus.STORED
    finally:
        await store.aclose()


async def test_on_a_cluster_a_confirmed_write_survives_its_primary(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    store = Store.from_url(cluster_url, NODE, wait=LONG)
    try:
        kept = await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        await store.journal.write([NewEntry("kept", SENDER, PATH_KEY, onion(1), NOW)])
        assert store.durable.short == 0
        key = store.keys.mail_key
        old = await asyncio.to_thread(redis_cluster.kill_primary, key)
        try:
            await asyncio.to_thread(redis_cluster.wait_for_failover, key, old)
            async with Store.from_url(cluster_url, NODE) as after:
                assert [m.id for m in await after.queues.messages(peer(1))] == [kept.message_id]
                assert [e.entry for e in await after.journal.pending()] == ["kept"]
        finally:
            await asyncio.to_thread(redis_cluster.restore, old)
    finally:
        await store.aclose()


async def test_through_sentinel_the_wait_covers_the_primarys_replica(
    redis_sentinel: SentinelGroup, sentinel_url: str
) -> None:
    async with Store.from_url(sentinel_url, NODE, wait=LONG) as store:
        primary = redis_sentinel.primary()
        replica = next(s for s in redis_sentinel.servers if s is not primary)
        before = _wait_calls(primary)
        await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        assert _wait_calls(primary) >= before + 1
        assert store.durable.short == 0
        with replica.client() as c:
            assert c.llen(store.keys.queue_key(peer(1))) == 1


async def test_the_daemon_waits_and_counts_what_its_replica_did_not_confirm(
    pair: Pair, tmp_path: Path
) -> None:
    port = free_port()
    async with world(
        Personality.LND_0_21,
        pair.primary.url,
        tmp_path,
        metrics_addr=f"127.0.0.1:{port}",
        redis_wait_replicas=1,
        redis_wait_timeout=0.05,
    ) as w:
        await w.start_daemon()
        with pair.replica_frozen():
            await w.alice.send_onion_message(w.message_for_bob(b"while the replica sleeps"))
            await stored_count(w, 1)

            async def counted_short() -> bool:
                samples = await asyncio.to_thread(scrape, port)
                # the journal write and the put, at least
                return samples.get("lndmailbox_replica_wait_short_total{}", 0) >= 2

            await wait_until(counted_short, what="the short waits in the metrics")
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery to bob")
        assert await w.payloads_received(w.bob) == [b"while the replica sleeps"]


ONE = ReplicaWait(replicas=1, timeout=60.0)
"""One replica asked outright (no INFO look), with a timeout no test reaches."""


def _kill_the_waiting_client(client: redis.Redis) -> None:
    """Closes, from the server's side, the connection that is blocked in WAIT (setup: it
    polls until the WAIT is seen). A connection's `cmd` is its last command, so the
    pooled connection of an earlier write shows `wait` before its next script has run:
    only the blocked flag says the WAIT is under way."""
    for _ in range(1000):
        for entry in client.client_list():
            if entry.get("cmd") in ("wait", "waitaof") and "b" in entry.get("flags", ""):
                client.client_kill_filter(_id=entry["id"])
                return
        time.sleep(0.01)
    raise AssertionError("no client ever blocked in WAIT")


async def _put_while_the_wait_is_cut(
    store: Store, primary: redis.Redis, replica_pid: int, n: int
) -> PutStatus:
    os.kill(replica_pid, signal.SIGSTOP)
    try:
        put = asyncio.ensure_future(put_one(store, peer(1), SENDER, PATH_KEY, onion(n), NOW))
        await asyncio.to_thread(_kill_the_waiting_client, primary)
        return (await put).status
    finally:
        os.kill(replica_pid, signal.SIGCONT)


async def test_a_connection_lost_in_the_wait_counts_it_short_and_sends_nothing_again(
    pair: Pair,
) -> None:
    store = Store.from_url(pair.primary.url, NODE, wait=ONE)
    try:
        await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        before = await _commands(pair.primary_client)
        assert pair.replica.pid is not None
        with redis.Redis.from_url(pair.primary.url) as primary:
            status = await _put_while_the_wait_is_cut(store, primary, pair.replica.pid, 2)
        assert status is PutStatus.STORED
        assert store.durable.short == 1
        after = await _commands(pair.primary_client)
        # The write went once (a pipeline's retry would have sent the pair again).
        assert after["evalsha"] == before["evalsha"] + 1
        assert after["wait"] == before["wait"] + 1
        assert len(await store.queues.messages(peer(1))) == 2
        # The pool hands out a good connection for the next write.
        await put_one(store, peer(1), SENDER, PATH_KEY, onion(3), NOW)
        assert store.durable.short == 1
    finally:
        await store.aclose()


async def test_on_a_cluster_a_connection_lost_in_the_wait_sends_nothing_again(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    store = Store.from_url(cluster_url, NODE, wait=ONE)
    try:
        await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        owner = redis_cluster.primary_for(store.keys.mail_key)
        replica = _replica_of(redis_cluster, owner)
        others = [n for n in redis_cluster.primaries() if n is not owner]
        evalsha, waits = _calls(owner, "evalsha"), [_wait_calls(n) for n in others]
        assert replica.process is not None
        with owner.client() as primary:
            status = await _put_while_the_wait_is_cut(store, primary, replica.process.pid, 2)
        assert status is PutStatus.STORED
        assert store.durable.short == 1
        assert _calls(owner, "evalsha") == evalsha + 1
        # Never the wait on another shard, which would confirm a write it never saw.
        assert [_wait_calls(n) for n in others] == waits
        assert len(await store.queues.messages(peer(1))) == 2
    finally:
        await store.aclose()


async def test_on_a_cluster_a_moved_write_waits_on_the_new_owner_only(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    store = Store.from_url(cluster_url, NODE, wait=ONE)
    try:
        cluster = store.redis
        assert isinstance(cluster, RedisCluster)
        await cluster.initialize()
        owner = redis_cluster.primary_for(store.keys.mail_key)
        other = next(n for n in redis_cluster.primaries() if n is not owner)
        # The client's slot map goes stale, as after a failover it has not heard of.
        slot = cluster.keyslot(store.keys.mail_key)
        stale = next(n for n in cluster.get_primaries() if int(n.port) == other.port)
        cluster.nodes_manager.slots_cache[slot] = [stale]
        before = {n.port: (_calls(n, "evalsha"), _wait_calls(n)) for n in (owner, other)}
        result = await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        assert result.status is PutStatus.STORED
        assert store.durable.short == 0
        assert _wait_calls(owner) == before[owner.port][1] + 1
        assert _calls(owner, "evalsha") == before[owner.port][0] + 1
        # The stale node answered MOVED to the script and never saw a wait.
        assert _wait_calls(other) == before[other.port][1]
        with _replica_of(redis_cluster, owner).client() as c:
            c.execute_command("READONLY")
            assert c.llen(store.keys.queue_key(peer(1))) == 1
    finally:
        await store.aclose()


async def test_on_a_cluster_an_asked_write_waits_on_the_importing_node(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    async with Store.from_url(cluster_url, NODE, wait=ONE) as store:
        # One key, in the node's slot (its hash tag), on neither shard yet: the source
        # of a moving slot answers ASK, the target takes it after ASKING. (A store
        # script's keys, some there and some not, would be refused as TRYAGAIN.)
        probe = store.keys.mail_key + ":probe"
        incr = store.redis.register_script("return redis.call('INCR', KEYS[1])")
        source, target = await asyncio.to_thread(redis_cluster.begin_moving, probe)
        try:
            before = {n.port: _wait_calls(n) for n in (source, target)}
            assert await store.durable.run(incr, [probe], []) == 1
            assert store.durable.short == 0
            assert _wait_calls(target) == before[target.port] + 1
            assert _wait_calls(source) == before[source.port]
        finally:
            await asyncio.to_thread(redis_cluster.finish_moving, probe, source, target)
        assert await store.redis.get(probe) == b"1"


async def test_on_a_cluster_a_lost_script_is_loaded_on_its_node_only(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    async with Store.from_url(cluster_url, NODE, wait=ONE) as store:
        await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
        owner = redis_cluster.primary_for(store.keys.mail_key)
        with owner.client() as c:
            c.script_flush()
        primaries = redis_cluster.primaries()
        before = [_calls(n, "script|load") for n in primaries]
        await put_one(store, peer(1), SENDER, PATH_KEY, onion(2), NOW)
        loaded = [_calls(n, "script|load") - b for n, b in zip(primaries, before, strict=True)]
        assert loaded == [int(n is owner) for n in primaries]
        assert len(await store.queues.messages(peer(1))) == 2
        assert store.durable.short == 0


async def test_a_script_missing_again_after_its_load_is_a_store_unavailable(pair: Pair) -> None:
    durable = DurableWrites(pair.primary_client, ONE)
    script = pair.primary_client.register_script("return redis.call('INCR', KEYS[1])")
    # A sha no load can give: each load leaves the script missing, as when the server
    # under the connection changes between the load and the call.
    script.sha = "0" * 40
    before = await _commands(pair.primary_client)
    with pytest.raises(StoreUnavailableError, match="failover"):
        await durable.run(script, ["k"], [])
    after = await _commands(pair.primary_client)
    assert after["evalsha"] == before.get("evalsha", 0) + 2
    assert after.get("wait", 0) == before.get("wait", 0)
    assert await pair.primary_client.get("k") is None


async def test_auto_waits_only_for_replicas_online(tmp_path: Path) -> None:
    with (
        RedisServer(tmp_path / "primary") as primary,
        RedisServer(tmp_path / "replica") as replica,
    ):
        client = aioredis.Redis.from_url(primary.url)
        replica_client = aioredis.Redis.from_url(replica.url)
        try:
            # The replica's full sync waits a minute to start: it stays in wait_bgsave.
            await client.config_set("repl-diskless-sync", "yes")
            await client.config_set("repl-diskless-sync-delay", 60)
            await replica_client.replicaof("127.0.0.1", primary.port)

            async def syncing() -> bool:
                return await _replicas_of(client) == 1

            await _until(syncing, "the replica asks for a full sync")
            info = await client.info("replication")
            assert info["slave0"]["state"] != "online", info
            auto = Store(client, NODE, wait=ReplicaWait(replicas=None, timeout=2.0))
            result = await put_one(auto, peer(1), SENDER, PATH_KEY, onion(1), NOW)
            assert result.status is PutStatus.STORED
            assert auto.durable.short == 0
            assert "wait" not in await _commands(client)
        finally:
            await client.aclose()
            await replica_client.aclose()


async def test_auto_looks_again_right_after_a_short_wait(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durability, "LOOK_EVERY", 3600.0)  # only a short wait looks again
    store = pair.store(ReplicaWait(replicas=None, timeout=0.05))
    await put_one(store, peer(1), SENDER, PATH_KEY, onion(1), NOW)
    assert store.durable.short == 0
    await pair.replica_client.replicaof("127.0.0.1", free_port())
    await _until(lambda: _no_replicas(pair.primary_client), "the primary has no replica")
    await put_one(store, peer(1), SENDER, PATH_KEY, onion(2), NOW)
    assert store.durable.short == 1  # it waited for the replica it had looked at
    waits = (await _commands(pair.primary_client))["wait"]
    await put_one(store, peer(1), SENDER, PATH_KEY, onion(3), NOW)
    assert store.durable.short == 1
    assert (await _commands(pair.primary_client))["wait"] == waits
