"""The store on a real Redis Cluster (3 primaries, 3 replicas) and a real Sentinel group (a
primary, a replica, 3 sentinels): every kind of operation, scripts reloaded after
NOSCRIPT, and a primary killed mid-use."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from coincurve import PrivateKey
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterError, TryAgainError
from simnet import Personality

from lndmailbox.cli import main as mailboxctl
from lndmailbox.errors import StoreUnavailableError
from lndmailbox.store import Limits, LockRenewal, PutStatus, Store, free_port
from lndmailbox.store.audit import audit
from lndmailbox.store.journal import NewEntry, entry_for
from tests.daemon_harness import World, stored_count, wait_until, world
from tests.redis_topologies import LocalCluster, Process, SentinelGroup
from tests.store_helpers import put_one
from tests.tls_terminator import self_signed, tls_terminator

log = logging.getLogger(__name__)

NOW = 1_700_000_000.0
NODE = bytes.fromhex("02" + "33" * 32)


def pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


@pytest.fixture(params=["cluster", "sentinel"])
def topology_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_every_operation(topology_url: str) -> None:
    """put, peek, deliver, confirm, requeue, sweep, purge, journal, lock, heartbeat,
    allowlist, counters and stats through the URL's client."""
    async with Store.from_url(topology_url, NODE, Limits(ttl=100.0)) as store:
        bob, carol = pubkey(), pubkey()
        ids = [(await put_one(store, bob, pubkey(), pubkey(), os.urandom(500), NOW)).message_id]
        ids.append((await put_one(store, bob, pubkey(), pubkey(), os.urandom(500), NOW)).message_id)
        short = await put_one(store, carol, pubkey(), pubkey(), os.urandom(200), NOW, ttl=5.0)
        assert short.status is PutStatus.STORED
        ready, expired = await store.queues.peek(bob, NOW + 1, limit=10)
        assert ([m.id for m in ready], expired) == (ids, [])
        assert await store.queues.move_delivered(ready, 1000) == 2
        assert len((await store.queues.unconfirmed_by_peer())[bob]) == 2
        back, given_up = await store.queues.requeue(bob, 3)
        assert ([m.id for m in back], given_up) == (ids, [])
        ready, _ = await store.queues.peek(bob, NOW + 1, limit=10)
        assert await store.queues.move_delivered(ready, 2000) == 2
        confirmed = await store.queues.confirm(bob, [(ids[0], 2000)])
        assert [m.id for m in confirmed] == [ids[0]]
        assert await store.queues.totals() == (2, 2, 500 + 33 + 200 + 33)  # one confirmed
        assert [m.id for m in await store.queues.sweep_expired(NOW + 10)] == [short.message_id]
        assert await store.queues.purge(bob) == 1
        assert (await store.queues.stats()).messages == 0

        path_key, onion = pubkey(), os.urandom(300)
        entry = NewEntry(entry_for(path_key, onion), pubkey(), path_key, onion, NOW)
        assert await store.journal.write([entry]) == 0
        assert [e.entry for e in await store.journal.pending()] == [entry.entry]
        assert await store.journal.write(decided=[entry.entry]) == 0
        assert await store.journal.pending() == []

        assert await store.control.acquire_lock("me", 5)
        assert await store.control.renew_lock("me", 5) is LockRenewal.RENEWED
        await store.control.write_heartbeat({"pid": 1})
        assert await store.control.read_heartbeat() == {"pid": "1"}
        await store.control.request_delivery(carol)
        assert await store.control.wait_delivery_requests(0.1) == [carol]
        assert await store.control.release_lock("me")
        await store.allowlist.add([carol])
        assert await store.allowlist.members() == [carol]
        await store.events.record(counters={"stored": 3})
        assert (await store.events.counters())["stored"] >= 3
        assert (await store.server.info()).used_memory > 0
        assert await store.server.memory_usage() > 0
        assert await Store.nodes_at(topology_url) == [NODE]
        assert await audit(store) == []


async def _flush_scripts(store: Store) -> None:
    if isinstance(store.redis, RedisCluster):
        await store.redis.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.ALL_NODES)
    else:
        await store.redis.script_flush()


async def test_scripts_are_loaded_again_after_script_flush(topology_url: str) -> None:
    """After SCRIPT FLUSH (what a failover to a replica that never ran a script looks
    like) the next call gets NOSCRIPT, loads the script again and succeeds."""
    async with Store.from_url(topology_url, NODE) as store:
        peer = pubkey()
        first = await put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW)
        await _flush_scripts(store)
        assert not any(await store.redis.script_exists(store.queues._put.sha))
        second = await put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW)
        assert {first.status, second.status} == {PutStatus.STORED}
        assert all(await store.redis.script_exists(store.queues._put.sha))
        assert [m.id for m in await store.queues.messages(peer)] == [
            first.message_id,
            second.message_id,
        ]


async def test_the_cluster_client_follows_ask_and_moved(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    """The node's slot moves to another shard under a running store: a key already moved
    is read through ASK, a script over half-moved keys is refused as unavailable
    (TRYAGAIN) rather than run on part of them, and once the slot has moved MOVED sends
    the client to the new shard, where everything is."""
    async with Store.from_url(cluster_url, NODE) as store:
        peer, other = pubkey(), pubkey()
        ids = [
            (await put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW)).message_id
            for _ in range(3)
        ]
        await put_one(store, other, pubkey(), pubkey(), os.urandom(300), NOW)
        queue = store.keys.queue_key(peer)
        source, target = await asyncio.to_thread(redis_cluster.begin_moving, queue)
        try:
            await asyncio.to_thread(redis_cluster.move_keys, source, target, [queue.encode()])
            assert [m.id for m in await store.queues.messages(peer)] == ids, "ASK followed"
            with pytest.raises(StoreUnavailableError) as refused:
                await put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW)
            print(f"a script over half-moved keys: {refused.value!r}")
            assert isinstance(refused.value.__cause__, ClusterError | TryAgainError)
        finally:
            await asyncio.to_thread(redis_cluster.finish_moving, queue, source, target)
        assert [m.id for m in await store.queues.messages(peer)] == ids, "MOVED followed"
        assert isinstance(store.redis, RedisCluster)
        node = store.redis.get_node_from_key(queue)
        assert node is not None
        assert node.port == target.port, "the slot map was updated"
        put = await put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW)
        assert put.status is PutStatus.STORED
        assert (await store.queues.stats()).messages == 5
        assert await audit(store) == []


async def test_rediss_cluster_url(tmp_path: Path) -> None:
    """rediss+cluster:// to a Cluster whose nodes sit behind TLS terminators (the valkey
    build has no TLS) and name the terminators' ports to clients: the slot map and every
    node's connection go over TLS, verified against the given CA."""
    cert, key = self_signed(tmp_path)
    tls_ports = [free_port() for _ in range(3)]
    cluster = LocalCluster(tmp_path / "cluster", replicas=False, client_ports=tls_ports)
    try:
        await asyncio.to_thread(cluster.start)
        async with contextlib.AsyncExitStack() as stack:
            for node, port in zip(cluster.nodes, tls_ports, strict=True):
                await stack.enter_async_context(tls_terminator(node.port, cert, key, port=port))
            url = f"rediss+cluster://127.0.0.1:{tls_ports[0]}?ssl_ca_certs={cert}"
            async with Store.from_url(url, NODE) as store:
                peers = [pubkey() for _ in range(3)]
                for peer in peers:
                    await put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW)
                assert isinstance(store.redis, RedisCluster)
                assert {n.port for n in store.redis.get_nodes()} == set(tls_ports)
                assert sorted(await store.queues.peers_with_mail()) == sorted(peers)
                assert await Store.nodes_at(url) == [NODE]
                assert await audit(store) == []
            async with Store.from_url(url.partition("?")[0], NODE) as store:
                with pytest.raises(StoreUnavailableError):
                    await store.control.lock_owner()  # the certificate is not trusted
    finally:
        cluster.stop()


async def _wait_replicated(store: Store) -> None:
    """WAIT until the primary holding the node's keys has a replica with every write."""
    if isinstance(store.redis, RedisCluster):
        node = store.redis.get_node_from_key(store.keys.counters_key)
        acked = await store.redis.execute_command("WAIT", 1, 10_000, target_nodes=node)
    else:
        acked = await store.redis.execute_command("WAIT", 1, 10_000)  # type: ignore[no-untyped-call]
    assert int(acked) >= 1, "a replica has the writes"


async def _through_failover(
    store: Store, kill: Callable[[], Process], wait: Callable[[Process], Process]
) -> tuple[list[str], int, Process, Process]:
    """Kills the primary, then puts one message after another until the failover is
    over and five more went through; returns (ids acknowledged, calls that failed,
    the old primary, the new one). Every failure must be StoreUnavailableError."""
    peer = bytes.fromhex("02" + "44" * 32)
    old = kill()
    done = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(asyncio.to_thread(wait, old))
    waiter.add_done_callback(lambda t: done.set_result(None))
    acked: list[str] = []
    failed = after = 0
    while after < 5:
        try:
            put = await put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW)
        except StoreUnavailableError as e:
            failed += 1
            log.info("during the failover: %s", e)
            await asyncio.sleep(0.1)
            continue
        assert put.status is PutStatus.STORED
        acked.append(put.message_id)
        if done.done():
            after += 1
        else:
            await asyncio.sleep(0.05)
    return acked, failed, old, await waiter


def _has_script(server: Process, sha: str) -> bool:
    with server.client() as c:
        return bool(c.script_exists(sha)[0])


async def _check_failover(
    deployment: LocalCluster | SentinelGroup,
    url: str,
    kill: Callable[[], Process],
    wait: Callable[[Process], Process],
    restore: Callable[[Process], None],
    points_at: Callable[[Store], Awaitable[int]],
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    async with Store.from_url(url, NODE, Limits(ttl=3600.0, max_messages_per_peer=10_000)) as store:
        peers = [b"\x02" + rng.randbytes(32) for _ in range(5)]
        before = [
            (await put_one(store, p, pubkey(), pubkey(), rng.randbytes(400), NOW)).message_id
            for p in peers
            for _ in range(4)
        ]
        await _wait_replicated(store)
        sha = store.queues._put.sha
        assert not any(_has_script(r, sha) for r in deployment.replicas()), (
            "the replica to be promoted never ran the scripts: its first put is NOSCRIPT"
        )
        acked, failed, old, new = await _through_failover(store, kill, wait)
        print(f"{len(acked)} puts acknowledged around the failover, {failed} failed")
        assert failed > 0, "the calls during the failover failed"
        assert await points_at(store) == new.port, "the client found the new primary"
        try:
            held = {m.id for p in peers for m in await store.queues.messages(p)}
            assert set(before) <= held, "nothing replicated before the kill was lost"
            peer = bytes.fromhex("02" + "44" * 32)
            assert [m.id for m in await store.queues.messages(peer)] == acked
            assert await audit(store) == []
        finally:
            await asyncio.to_thread(restore, old)
        assert (await store.queues.stats()).messages == len(before) + len(acked)


async def test_a_cluster_failover_is_an_outage_and_loses_nothing_replicated(
    redis_cluster: LocalCluster, cluster_url: str
) -> None:
    key = f"lndmailbox:{{{NODE.hex()}}}:counters"

    async def points_at(store: Store) -> int:
        assert isinstance(store.redis, RedisCluster)
        node = store.redis.get_node_from_key(key)
        assert node is not None
        return int(node.port)

    await _check_failover(
        redis_cluster,
        cluster_url,
        lambda: redis_cluster.kill_primary(key),
        lambda old: redis_cluster.wait_for_failover(key, old),
        redis_cluster.restore,
        points_at,
    )


async def test_a_sentinel_failover_is_an_outage_and_loses_nothing_replicated(
    redis_sentinel: SentinelGroup, sentinel_url: str
) -> None:
    async def points_at(store: Store) -> int:
        address = await store.redis.connection_pool.get_master_address()  # type: ignore[union-attr]
        return int(address[1])

    await _check_failover(
        redis_sentinel,
        sentinel_url,
        redis_sentinel.kill_primary,
        redis_sentinel.wait_for_failover,
        redis_sentinel.restore,
        points_at,
    )


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_the_daemon_rides_out_a_failover(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The daemon (lnd 0.21) on a Cluster or Sentinel: a message stored before the
    primary dies and one that arrives while it fails over are both delivered when bob
    comes back; the daemon's own retrying (no code of this test) carries it through."""
    url: str = request.getfixturevalue(f"{kind}_url")
    deployment: LocalCluster | SentinelGroup = request.getfixturevalue(f"redis_{kind}")
    async with world(Personality.LND_0_21, url, tmp_path, confirm_after=0.2) as w:
        key = w.store.keys.counters_key
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"before"))
        await stored_count(w, 1)
        await asyncio.to_thread(_wait_replicated_sync, deployment, key)
        if isinstance(deployment, LocalCluster):
            old = deployment.kill_primary(key)
        else:
            old = deployment.kill_primary()
        await w.alice.send_onion_message(w.message_for_bob(b"during"))
        try:
            if isinstance(deployment, LocalCluster):
                await asyncio.to_thread(deployment.wait_for_failover, key, old)
            else:
                await asyncio.to_thread(deployment.wait_for_failover, old)
            await wait_until(lambda: _held(w, 2), within=30.0, what="both stored")
            w.bob.connect()
            await wait_until(lambda: len(w.bob.received) == 2, within=30.0, what="delivery")
            assert await w.payloads_received(w.bob) == [b"before", b"during"]
            await wait_until(lambda: _held(w, 0), within=30.0, what="confirmed")
        finally:
            await asyncio.to_thread(deployment.restore, old)


async def _held(w: World, count: int) -> bool:
    try:
        return len(await w.held_for(w.bob)) == count
    except StoreUnavailableError:
        return False


def _wait_replicated_sync(deployment: LocalCluster | SentinelGroup, key: str) -> None:
    primary = (
        deployment.primary_for(key)
        if isinstance(deployment, LocalCluster)
        else deployment.primary()
    )
    with primary.client() as c:
        assert int(c.execute_command("WAIT", 1, 10_000)) >= 1


async def test_mailboxctl_on_the_url(
    topology_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mailboxctl finds the only mailbox there, lists its peers, purges one."""
    async with Store.from_url(topology_url, NODE) as store:
        bob, carol = (PrivateKey().public_key.format() for _ in range(2))
        for peer in (bob, carol, carol):
            await put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW)
    (tmp_path / "empty.toml").write_text("")
    flags = ["--config", str(tmp_path / "empty.toml"), "--redis-url", topology_url]
    flags += ["--rpcserver", f"127.0.0.1:{free_port()}", "--tlscertpath", str(tmp_path / "no")]

    async def ctl(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(mailboxctl, [*flags, "--json", *argv])
        out, err = capsys.readouterr()
        assert code == 0, err
        return code, out

    code, out = await ctl("peers")
    assert code == 0
    assert {(p["peer"], p["messages"]) for p in json.loads(out)["peers"]} == {
        (bob.hex(), 1),
        (carol.hex(), 2),
    }
    code, out = await ctl("status")
    assert code == 0
    status = json.loads(out)
    assert (status["node"], status["mail"]["messages"]) == (NODE.hex(), 3)
    assert status["redis"]["reachable"]
    assert status["redis"]["mailbox_memory"] > 0
    assert (await ctl("purge", carol.hex(), "--yes"))[0] == 0
    code, out = await ctl("peers")
    assert [p["peer"] for p in json.loads(out)["peers"]] == [bob.hex()]


async def test_on_sentinel_more_concurrent_calls_than_connections_wait(sentinel_url: str) -> None:
    """Sentinel's pool waits for a free connection, as the one-server pool does."""
    async with Store.from_url(sentinel_url, NODE, max_connections=4) as store:
        peer = pubkey()
        results = await asyncio.gather(
            *(put_one(store, peer, pubkey(), pubkey(), os.urandom(300), NOW + i) for i in range(40))
        )
        assert {r.status for r in results} == {PutStatus.STORED}
        assert len(await store.queues.messages(peer)) == 40
