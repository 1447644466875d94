"""``mailboxctl migrate --to URL`` from a standalone Redis to the Cluster and from there to
a fresh standalone one: after each move every message (decoded) and every key's expiry is
as it was, the source holds nothing of the node, and a daemon on the destination delivers
each of bob's messages once, as bob proves by peeling it with his own key. And the Cluster
as its own destination, or a daemon of the node on it, is refused."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from simnet import Personality

from lndmailbox.onion import Forward, peel
from lndmailbox.store import NewMessage, RedisServer, Store, transfer
from lndmailbox.store.audit import audit
from lndmailbox.store.client import as_str, connect
from tests.daemon_harness import World, counted, wait_until, world
from tests.store_helpers import key
from tests.test_migrate import ctl

Snapshot = dict[str, Any]
DAEMONS_OWN = (":lock", ":heartbeat", ":daemons")


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two fresh standalone servers: where the mailbox starts, and where it ends."""
    first, last = RedisServer(tmp_path / "first"), RedisServer(tmp_path / "last")
    first.start()
    try:
        last.start()
        try:
            yield first.url, last.url
        finally:
            last.stop()
    finally:
        first.stop()


async def fill(url: str, w: World, others: list[bytes], rng: random.Random) -> list[bytes]:
    """This release's store fills the mailbox: four messages for bob (one of them taken by
    lnd and unconfirmed), three for each of ``others`` (one unconfirmed for the first), the
    allowlist, and the counters and events these writes leave. Bob's texts."""
    now = time.time()
    texts = [f"moved across deployments {rng.randrange(10**9)}".encode() for _ in range(4)]
    async with Store.from_url(url, w.node.pubkey) as store:
        for text in texts:
            m = w.message_for_bob(text)
            hop = await peel(m.path_key, m.onion, w.node.key)
            assert isinstance(hop, Forward)
            await store.queues.put_many(
                [NewMessage(w.bob.pubkey, w.alice.pubkey, hop.next_path_key, hop.next_onion, now)]
            )
        batch = [
            NewMessage(peer, w.alice.pubkey, key(rng), rng.randbytes(rng.randrange(200, 1400)), now)
            for peer in others
            for _ in range(3)
        ]
        await store.queues.put_many(batch, ttl=600 + rng.randrange(600))
        for peer in (w.bob.pubkey, others[0]):
            (taken,), _ = await store.queues.peek(peer, time.time())
            assert await store.queues.move_delivered([taken], int(time.time() * 1000)) == 1
        await store.allowlist.add([w.bob.pubkey, *others[1:], key(rng)])
    return texts


async def snapshot(url: str, node: bytes, peers: list[bytes]) -> Snapshot:
    """The mailbox as this release reads it back, and each key's expiry (PEXPIRETIME)."""
    async with Store.from_url(url, node) as store:
        expiry = {}
        async for raw in store.redis.scan_iter(match=store.keys.key_pattern, count=1000):
            name = as_str(raw)
            expiry[name] = int(await store.redis.pexpiretime(name))
        return {
            "queued": {p: await store.queues.messages(p) for p in peers},
            "unconfirmed": {p: await store.queues.unconfirmed(p) for p in peers},
            "allowed": sorted(await store.allowlist.members()),
            "counters": await store.events.counters(),
            "events": await store.events.recent(1000),
            "expiry": expiry,
        }


async def of_node(url: str, node: bytes) -> list[str]:
    """Every key that names the node, on every primary of a Cluster."""
    client = connect(url, max_connections=4)
    try:
        return [as_str(k) async for k in client.scan_iter(match=f"*{node.hex()}*", count=1000)]
    finally:
        await client.aclose()


async def move(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node: bytes, source: str, to: str
) -> None:
    argv = ["--redis-url", source, "--node", node.hex(), "migrate", "--to", to]
    code, said = await ctl(capsys, tmp_path, *argv)
    assert code == 0, said
    assert "checked each, and removed them here" in said


def compare(before: Snapshot, after: Snapshot, elapsed_ms: int) -> None:
    """Equal, but for each key's expiry, which may move by at most the move's duration; the
    daemons' own keys (a stopped daemon's last heartbeat) are not copied."""
    assert {k: v for k, v in after.items() if k != "expiry"} == {
        k: v for k, v in before.items() if k != "expiry"
    }
    copied = {k: v for k, v in before["expiry"].items() if not k.endswith(DAEMONS_OWN)}
    assert after["expiry"].keys() == copied.keys()
    for name, expires in copied.items():
        if expires < 0:
            assert after["expiry"][name] == expires, name
        else:
            assert 0 <= after["expiry"][name] - expires <= elapsed_ms, name


async def deliver_to_bob(w: World, texts: list[bytes], confirmed_before: int) -> None:
    """The daemon on the destination hands bob each of his messages once (its confirmed
    counter, moved with the mailbox, counts them on from ``confirmed_before``)."""
    await w.start_daemon()
    w.bob.connect()
    await wait_until(lambda: len(w.bob.received) >= len(texts), what="delivery to bob")

    async def confirmed() -> bool:
        return await w.held_for(w.bob) == []

    await wait_until(confirmed, what="every delivery to bob confirmed")
    assert len(w.bob.received) == len(texts)
    assert sorted(await w.payloads_received(w.bob)) == sorted(texts)
    await counted(w, "confirmed", confirmed_before + len(texts))
    assert await audit(w.store) == []
    await w.stop_daemon()


async def test_a_mailbox_moves_to_the_cluster_and_back_whole_and_is_delivered_once(
    standalone: tuple[str, str],
    cluster_url: str,
    rng: random.Random,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four keys a round trip, so that the pipelines of DUMP, RESTORE and UNLINK run in
    several pages on the Cluster too."""
    monkeypatch.setattr(transfer, "KEYS_PER_CALL", 4)
    first, last = standalone
    secret = rng.randbytes(32)
    others = [key(rng) for _ in range(3)]

    # Standalone -> Cluster; a daemon there delivers bob's four.
    async with world(
        Personality.LND_0_21,
        cluster_url,
        tmp_path / "on-cluster",
        node_secret=secret,
        confirm_after=0.2,
    ) as w:
        node, peers = w.node.pubkey, [w.bob.pubkey, *others]
        texts = await fill(first, w, others, rng)
        before = await snapshot(first, node, peers)
        assert len(before["unconfirmed"][w.bob.pubkey]) == 1
        assert len(before["queued"][others[0]]) == 2
        assert before["counters"]["stored"] == 4 + 9
        assert before["events"]
        started = time.monotonic()
        await move(capsys, tmp_path, node, first, cluster_url)
        elapsed_ms = int((time.monotonic() - started) * 1000) + 1
        with capsys.disabled():  # the next mailboxctl call would swallow it
            print(f"standalone -> cluster: {elapsed_ms} ms")
        compare(before, await snapshot(cluster_url, node, peers), elapsed_ms)
        assert await of_node(first, node) == []
        await deliver_to_bob(w, texts, before["counters"].get("confirmed", 0))
        kept = {p: before["queued"][p] for p in others}

    # Cluster -> a fresh standalone, with new mail for this world's bob and the others'
    # mail still there; a daemon on it delivers bob's.
    async with world(
        Personality.LND_0_21, last, tmp_path / "on-last", node_secret=secret, confirm_after=0.2
    ) as w:
        assert w.node.pubkey == node
        peers = [w.bob.pubkey, *others]
        texts = await fill(cluster_url, w, others, rng)
        before = await snapshot(cluster_url, node, peers)
        for p in others[1:]:
            assert before["queued"][p][: len(kept[p])] == kept[p]
        started = time.monotonic()
        await move(capsys, tmp_path, node, cluster_url, last)
        elapsed_ms = int((time.monotonic() - started) * 1000) + 1
        with capsys.disabled():  # the next mailboxctl call would swallow it
            print(f"cluster -> standalone: {elapsed_ms} ms")
        compare(before, await snapshot(last, node, peers), elapsed_ms)
        assert await of_node(cluster_url, node) == []
        await deliver_to_bob(w, texts, before["counters"].get("confirmed", 0))


async def test_the_cluster_as_its_own_destination_is_refused_and_keeps_the_mailbox(
    cluster_url: str, rng: random.Random, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same Cluster by another spelling of its URL, even with --overwrite (which would
    otherwise remove the destination's keys of the node: the source's)."""
    node, peer = key(rng), key(rng)
    async with Store.from_url(cluster_url, node) as store:
        await store.queues.put_many(
            [NewMessage(peer, key(rng), key(rng), rng.randbytes(500), time.time())]
        )
    before = await snapshot(cluster_url, node, [peer])
    itself = cluster_url.replace("127.0.0.1", "localhost")
    argv = ["--redis-url", cluster_url, "--node", node.hex(), "migrate", "--to", itself]
    code, said = await ctl(capsys, tmp_path, *argv, "--overwrite")
    assert code == 1
    assert "the destination is the source" in said
    assert await snapshot(cluster_url, node, [peer]) == before


async def test_a_daemon_on_the_cluster_refuses_the_move_from_either_side(
    standalone: tuple[str, str],
    cluster_url: str,
    rng: random.Random,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, _ = standalone
    node, peer = key(rng), key(rng)
    for url in (first, cluster_url):
        async with Store.from_url(url, node) as store:
            await store.queues.put_many(
                [NewMessage(peer, key(rng), key(rng), rng.randbytes(500), time.time())]
            )
    async with Store.from_url(cluster_url, node) as on_cluster:
        assert await on_cluster.control.acquire_lock("lsp:pid=5:boot=b:pidns=1:c1", lease=60)
        for source, to, side in (
            (first, cluster_url, "destination"),
            (cluster_url, first, "source"),
        ):
            argv = ["--redis-url", source, "--node", node.hex(), "migrate", "--to", to]
            code, said = await ctl(capsys, tmp_path, *argv, "--overwrite")
            assert code == 1
            assert f"a daemon runs on the {side}" in said
            assert "lsp:pid=5" in said
        await on_cluster.redis.delete(on_cluster.keys.lock_key)
        await on_cluster.control.write_daemon("standby-1", {"role": "standby"}, stale=5, ttl=10)
        argv = ["--redis-url", cluster_url, "--node", node.hex(), "migrate", "--to", first]
        code, said = await ctl(capsys, tmp_path, *argv, "--overwrite")
        assert code == 1
        assert "holds the heartbeats of standby-1" in said
        assert len(await on_cluster.queues.messages(peer)) == 1
    async with Store.from_url(first, node) as on_first:
        assert len(await on_first.queues.messages(peer)) == 1
