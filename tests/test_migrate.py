"""Moving a mailbox the old release filled (its own code, tests/old_release.py) from the old
key layout into the current one: every key arrives with its content and expiry, nothing of
the old layout is left, a second run changes nothing, a run cut short between peers and
run again ends where one run ends, and it refuses while a daemon of the old release runs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from simnet import Personality

from lndmailbox.cli import main
from lndmailbox.daemon import run
from lndmailbox.errors import MigrationRefusedError
from lndmailbox.onion import Forward, peel
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import (
    LayoutMove,
    NewEntry,
    NewMessage,
    RedisServer,
    Store,
    StoredMessage,
    free_port,
    transfer,
)
from lndmailbox.store import migrate as migrate_module
from lndmailbox.store.audit import audit
from lndmailbox.store.client import RedisClient, as_str
from lndmailbox.store.journal import entry_for
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import decode_record, decode_unconfirmed
from tests.daemon_harness import GENERATIONS, counted, wait_until, world
from tests.old_release import OldFill, extract_old_release, run_old_release
from tests.store_helpers import key

State = dict[str, tuple[str, Any, int]]
"""Every key of a pattern: its type, its content (decoded as Redis holds it), its expiry
(PEXPIRETIME: absolute ms, -1 for none)."""


@pytest.fixture(scope="module")
def old_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_old_release(tmp_path_factory.mktemp("old-release"))


def message(rng: random.Random, size: int = 1366) -> OnionMessage:
    return OnionMessage(key(rng), rng.randbytes(size))


def old_mailbox(rng: random.Random, node: bytes, now: float) -> OldFill:
    """A mailbox as the old release leaves it: six peers with mail, two of them with
    unconfirmed messages, one flooded past its cap, a duplicate and a drop summarized, the
    allowlist, counters, a delivery request, a journal entry left undecided and one decided."""
    fill = OldFill(node=node, now=now, max_messages_per_peer=4)
    peers = [key(rng) for _ in range(6)]
    sender = key(rng)
    for i, count in enumerate((5, 3, 7, 1)):  # the third peer is flooded past its cap of 4
        for j in range(count):
            fill.put(peers[i], sender, message(rng), now - 60 + i + j / 10)
    again = message(rng)
    fill.put(peers[3], sender, again, now - 30)
    fill.put(peers[3], sender, again, now - 29)  # a duplicate: summarized
    fill.put_batch([(p, sender, message(rng, 200), now - 20) for p in peers[4:]])
    fill.deliver = {peers[0]: 2, peers[2]: 1}
    fill.allow = [*peers[:3], key(rng)]
    fill.counters = {"received": 25, "forwarded": 3, "leader_changes": 2}
    fill.summary = [("dropped", "not_allowed", sender, 2)]
    fill.delivery_requests = [peers[1]]
    undecided, decided = message(rng), message(rng)
    fill.journal_entry(entry_for(undecided.path_key, undecided.onion), sender, undecided, now - 5)
    fill.journal_entry(entry_for(decided.path_key, decided.onion), sender, decided, now - 4)
    fill.decided = [entry_for(decided.path_key, decided.onion)]
    return fill


async def state(client: RedisClient, pattern: str) -> State:
    found: State = {}
    raw: Any
    async for raw in client.scan_iter(match=pattern, count=1000):
        name = raw.decode()
        kind = as_str(await client.type(name))
        content: Any
        if kind == "list":
            content = await client.lrange(name, 0, -1)
        elif kind == "hash":
            content = await client.hgetall(name)
        elif kind == "set":
            content = sorted(await client.smembers(name))
        elif kind == "zset":
            content = await client.zrange(name, 0, -1, withscores=True)
        elif kind == "stream":
            content = await client.xrange(name)
        else:
            content = await client.get(name)
        found[name] = (kind, content, int(await client.pexpiretime(name)))
    return found


def renamed(old: State, node: bytes) -> State:
    """The old layout's keys under the current layout's names."""
    n = node.hex()
    peer_key = re.compile(rf"lndmailbox:{n}:peer:\{{([0-9a-f]{{66}})\}}:(\w+)")
    out: State = {}
    for name, value in old.items():
        match = peer_key.fullmatch(name)
        if match:
            out[f"lndmailbox:{{{n}}}:peer:{match[1]}:{match[2]}"] = value
        else:
            out[name.replace(f"lndmailbox:{n}:", f"lndmailbox:{{{n}}}:", 1)] = value
    return out


def old_pattern(node: bytes) -> str:
    return f"lndmailbox:{node.hex()}:*"


def new_pattern(node: bytes) -> str:
    return f"lndmailbox:{{{node.hex()}}}:*"


def held(st: State) -> list[bytes]:
    """Every message a state's queues and unconfirmed lists hold, as path_key ‖ onion."""
    anyone = b"\x02" * 33
    out = []
    for name, (_, content, _) in st.items():
        if name.endswith(":queue"):
            out += [decode_record(anyone, r) for r in content]
        elif name.endswith(":unconfirmed"):
            out += [decode_unconfirmed(anyone, e).message for e in content]
    return [m.path_key + m.onion for m in out]


async def test_a_mailbox_of_the_old_release_arrives_whole_and_a_second_run_changes_nothing(
    old_code: Path, redis_url: str, redis_client: aioredis.Redis, rng: random.Random
) -> None:
    node = key(rng)
    fill = old_mailbox(rng, node, now=1_700_000_000.0 + rng.randrange(10**8))
    run_old_release(old_code, redis_url, fill)
    before = await state(redis_client, old_pattern(node))
    kinds = {name.rsplit(":", 1)[1] for name in before}
    assert kinds >= {"queue", "unconfirmed", "dedup", "mail", "usage", "allow", "counters"}
    assert kinds >= {"events", "summary", "inbox", "decided", "delivery-requests"}
    assert any(f.startswith(b"flood:") for f in before[f"lndmailbox:{node.hex()}:usage"][1])
    assert await state(redis_client, new_pattern(node)) == {}

    async with Store.from_url(redis_url, node) as store:
        moved = await store.layout.run()
        after = await state(redis_client, new_pattern(node))
        assert after == renamed(before, node)
        assert await state(redis_client, old_pattern(node)) == {}
        assert await audit(store) == []
        assert moved.peers == 6
        assert moved.messages == len(held(before)) == 4 + 3 + 4 + 2 + 2
        assert moved.unconfirmed == 3
        assert moved.bytes == sum(map(len, held(before)))
        assert (moved.duplicates, moved.expired, moved.damaged) == (0, 0, 0)
        assert (moved.journal, moved.decided, moved.delivery_requests) == (1, 1, 1)
        assert moved.allowed == 4
        assert moved.describe().startswith("moved 6 peers (15 messages, ")

        again = await store.layout.run()
        assert again == LayoutMove()
        assert not again
        assert not await store.layout.pending()
        assert await state(redis_client, new_pattern(node)) == after


async def test_a_run_cut_short_between_peers_and_run_again_ends_where_one_run_ends(
    old_code: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cut short the way it happens for real: a daemon of the old release starts while the
    peers move (its lock appears), and the next run comes once it stopped."""
    node = key(rng)
    run_old_release(old_code, redis_url, old_mailbox(rng, node, now=1_700_000_000.0))
    snapshot: dict[Any, tuple[Any, int]] = {
        name: (await redis_client.dump(name), await redis_client.pexpiretime(name))
        async for name in redis_client.scan_iter(match=old_pattern(node))
    }
    original = sorted(held(await state(redis_client, old_pattern(node))))
    monkeypatch.setattr(migrate_module, "PEERS_PER_CALL", 2)
    lock = f"lndmailbox:{node.hex()}:lock"

    async with Store.from_url(redis_url, node) as store:
        move_page = store.layout._move
        pages = 0

        async def then_the_old_release_starts(*args: Any) -> set[bytes]:
            nonlocal pages
            left = await move_page(*args)
            pages += 1
            if pages == 1:
                await redis_client.set(lock, "lsp:4242:0a0b", px=600_000)
            return left

        monkeypatch.setattr(store.layout, "_move", then_the_old_release_starts)
        with pytest.raises(MigrationRefusedError, match="lsp:4242:0a0b"):
            await store.layout.run()
        old = held(await state(redis_client, old_pattern(node)))
        new = held(await state(redis_client, new_pattern(node)))
        assert old, "cut short between peers"
        assert new, "cut short between peers"
        assert not set(old) & set(new), "a message in both layouts"
        assert sorted(old + new) == original, "every message in exactly one place"
        assert await audit(store) == []

        await redis_client.delete(lock)
        monkeypatch.undo()
        await store.layout.run()
        twice = await state(redis_client, new_pattern(node))

        await redis_client.flushall()
        for name, (dumped, expires) in snapshot.items():
            await redis_client.restore(name, expires if expires > 0 else 0, dumped, absttl=True)
        await store.layout.run()
        once = await state(redis_client, new_pattern(node))
    assert twice == once
    assert sorted(held(once)) == original
    assert await state(redis_client, old_pattern(node)) == {}


async def test_the_old_leaders_last_decisions_move_before_any_peer(
    old_code: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old ``decided`` expires 15 s after the old leader's last decision: it joins
    the current one, and a late copy it names leaves the current journal, before the first
    peer moves (a run over many peers takes longer than that)."""
    node, peer, sender = key(rng), key(rng), key(rng)
    m = message(rng)
    late = entry_for(m.path_key, m.onion)
    fill = OldFill(node=node, now=time.time(), decided=[late])
    fill.put(peer, sender, message(rng), time.time())
    run_old_release(old_code, redis_url, fill)
    async with Store.from_url(redis_url, node) as store:
        await store.journal.write([NewEntry(late, sender, m.path_key, m.onion, time.time())])
        seen: list[tuple[list[str], float | None]] = []
        move_page = store.layout._move

        async def first_peer_page(*args: Any) -> set[bytes]:
            score = await redis_client.zscore(store.keys.decided_key, late)
            seen.append((await store.journal.entries(), score))
            return await move_page(*args)

        monkeypatch.setattr(store.layout, "_move", first_peer_page)
        moved = await store.layout.run()
        journal, score = seen[0]
        assert journal == []
        assert score is not None
        assert (moved.peers, moved.decided) == (1, 1)
        assert await store.journal.entries() == []
    assert await state(redis_client, old_pattern(node)) == {}


async def test_mail_the_old_index_lost_is_found_and_stale_books_are_counted_expired(
    old_code: Path, redis_url: str, redis_client: aioredis.Redis, rng: random.Random
) -> None:
    """A peer whose keys the old ``mail`` index no longer names (a SCAN finds them), and
    one the old usage still books though Redis dropped its queue (counted as expired)."""
    node, stray, gone, sender = key(rng), key(rng), key(rng), key(rng)
    fill = OldFill(node=node, now=time.time())
    for peer in (stray, gone):
        fill.put(peer, sender, message(rng), time.time())
    run_old_release(old_code, redis_url, fill)
    old = f"lndmailbox:{node.hex()}"
    await redis_client.zrem(f"{old}:mail", stray.hex(), gone.hex())
    await redis_client.delete(
        f"{old}:peer:{{{gone.hex()}}}:queue", f"{old}:peer:{{{gone.hex()}}}:dedup"
    )
    async with Store.from_url(redis_url, node) as store:
        moved = await store.layout.run()
        assert (moved.peers, moved.messages, moved.expired) == (2, 1, 1)
        assert len(await store.queues.held(stray)) == 1
        assert await store.queues.held(gone) == []
        assert (await store.events.counters())["expired"] == 1
        assert await audit(store) == []
    assert await state(redis_client, old_pattern(node)) == {}


async def test_a_peer_whose_old_keys_are_damaged_stays_and_the_rest_moves(
    old_code: Path, redis_url: str, redis_client: aioredis.Redis, rng: random.Random
) -> None:
    node, damaged, fine, sender = key(rng), key(rng), key(rng), key(rng)
    fill = OldFill(node=node, now=time.time())
    for peer in (damaged, fine):
        fill.put(peer, sender, message(rng), time.time())
    run_old_release(old_code, redis_url, fill)
    queue = f"lndmailbox:{node.hex()}:peer:{{{damaged.hex()}}}:queue"
    await redis_client.delete(queue)
    await redis_client.set(queue, "not a list")  # written by something else
    async with Store.from_url(redis_url, node) as store:
        moved = await store.layout.run()
        assert (moved.peers, moved.messages, moved.damaged) == (1, 1, 1)
        assert len(await store.queues.held(fine)) == 1
        assert await redis_client.get(queue) == b"not a list"
        assert (await store.layout.run()).damaged == 1  # left as it is, every time
        assert await audit(store) == []


async def test_a_peer_with_a_record_too_short_stays_untouched_and_the_rest_moves(
    old_code: Path, redis_url: str, redis_client: aioredis.Redis, rng: random.Random
) -> None:
    """A queue or unconfirmed list holding an entry shorter than a record's header, behind
    good records: the peer is left exactly as it was (no dedup field written, no Lua
    error), counted damaged, and the other peers move."""
    node, short_q, short_u, fine, sender = (key(rng) for _ in range(5))
    fill = OldFill(node=node, now=time.time())
    for peer in (short_q, short_u, fine):
        fill.put(peer, sender, message(rng), time.time())
    run_old_release(old_code, redis_url, fill)
    prefix = f"lndmailbox:{node.hex()}:peer:"
    await redis_client.rpush(f"{prefix}{{{short_q.hex()}}}:queue", b"\x02short")
    await redis_client.rpush(f"{prefix}{{{short_u.hex()}}}:unconfirmed", b"\x00" * 40)
    before = await state(redis_client, old_pattern(node))
    async with Store.from_url(redis_url, node) as store:
        moved = await store.layout.run()
        assert (moved.peers, moved.messages, moved.damaged) == (1, 1, 2)
        assert len(await store.queues.held(fine)) == 1
        for peer in (short_q, short_u):
            assert await store.queues.held(peer) == []
            keys = Keys(node)
            mine = (keys.queue_key(peer), keys.dedup_key(peer), keys.unconfirmed_key(peer))
            assert not await redis_client.exists(*mine)
        after = await state(redis_client, old_pattern(node))
        damaged_keys = {k for k in before if short_q.hex() in k or short_u.hex() in k}
        assert len(damaged_keys) == 5  # two queues, two dedup hashes, an unconfirmed list
        assert {k: after[k] for k in damaged_keys} == {k: before[k] for k in damaged_keys}
        assert (await store.layout.run()).damaged == 2  # left as it is, every time


async def test_a_mail_member_spelt_in_uppercase_is_damaged_not_paged_forever(
    old_code: Path, redis_url: str, redis_client: aioredis.Redis, rng: random.Random
) -> None:
    """bytes.fromhex reads "02AB..." as a peer, but the scripts remove the lowercase member:
    such a member is not taken for a peer (it would come back on every page)."""
    node, peer, sender = key(rng), key(rng), key(rng)
    fill = OldFill(node=node, now=time.time())
    fill.put(peer, sender, message(rng), time.time())
    run_old_release(old_code, redis_url, fill)
    mail = f"lndmailbox:{node.hex()}:mail"
    await redis_client.zadd(mail, {peer.hex().upper(): 1.0, " " + peer.hex(): 1.0})
    async with Store.from_url(redis_url, node) as store:
        moved = await store.layout.run()  # (before the fix: the same page, forever)
        assert (moved.peers, moved.messages, moved.damaged) == (1, 1, 2)
        assert len(await store.queues.held(peer)) == 1
    assert not await redis_client.exists(mail)


async def test_refused_while_the_old_release_leads_and_nothing_moves(
    old_code: Path, redis_url: str, redis_client: aioredis.Redis, rng: random.Random
) -> None:
    node = key(rng)
    fill = old_mailbox(rng, node, now=1_700_000_000.0)
    fill.lock = "lsp:pid=7:boot=b:pidns=1:c0ffee"
    run_old_release(old_code, redis_url, fill)
    before = await state(redis_client, old_pattern(node))
    async with Store.from_url(redis_url, node) as store:
        with pytest.raises(MigrationRefusedError) as refused:
            await store.layout.run()
        assert f"lndmailbox:{node.hex()}:lock is held by {fill.lock}" in str(refused.value)
        assert await state(redis_client, old_pattern(node)) == before
        assert await state(redis_client, new_pattern(node)) == {}

        # An old standby's heartbeat (it would take the lock within 0.15 s) refuses too.
        await redis_client.delete(f"lndmailbox:{node.hex()}:lock")
        await redis_client.hset(f"lndmailbox:{node.hex()}:daemons", "standby", "{}")
        with pytest.raises(MigrationRefusedError, match="daemons holds its heartbeat"):
            await store.layout.run()
        await redis_client.delete(f"lndmailbox:{node.hex()}:daemons")
        assert (await store.layout.run()).peers == 6


async def test_into_a_current_layout_that_holds_mail_already(
    old_code: Path, redis_url: str, redis_client: aioredis.Redis, rng: random.Random
) -> None:
    """The old release, then this one, then the old release again (a downgrade and back):
    a message both layouts hold is held once (the current copy), the journal keeps the copy
    received first and loses one the old release decided, and the old events newer than
    the current stream's last are appended with their ids, the older ones dropped."""
    node, peer, sender = key(rng), key(rng), key(rng)
    both, only_new, only_old = message(rng), message(rng), message(rng)
    journaled = message(rng)
    now = 1_700_000_000.0
    first = OldFill(node=node, now=now)
    first.put(peer, sender, only_old, now - 100)
    run_old_release(old_code, redis_url, first)
    async with Store.from_url(redis_url, node) as store:
        await store.queues.put_many(
            [NewMessage(peer, sender, m.path_key, m.onion, now) for m in (both, only_new)],
            ttl=3600,
        )
        entry = entry_for(journaled.path_key, journaled.onion)
        await store.journal.write(
            [NewEntry(entry, sender, journaled.path_key, journaled.onion, now - 1)]
        )
        current_events = await store.events.recent(10)
        # read by this release's standby too, and decided by the old release's leader
        decided = message(rng)
        late = entry_for(decided.path_key, decided.onion)
        await store.journal.write([NewEntry(late, sender, decided.path_key, decided.onion, now)])
        again = OldFill(node=node, now=now)
        again.put(peer, sender, both, now - 99)
        again.journal_entry(entry, sender, journaled, now - 3)
        again.journal_entry(late, sender, decided, now - 2)
        again.decided = [late]
        run_old_release(old_code, redis_url, again)
        old_events: Any = await redis_client.xrange(f"lndmailbox:{node.hex()}:events")

        moved = await store.layout.run()
        held = await store.queues.held(peer)
        assert [m.path_key for m in held] == [only_old.path_key, both.path_key, only_new.path_key]
        assert held[1].received_at == now  # the current layout's copy
        assert (moved.messages, moved.duplicates) == (1, 1)
        (pending,) = await store.journal.pending()  # not the one the old release decided
        assert (pending.entry, pending.received_at) == (entry, now - 3)
        assert (moved.journal, moved.journal_kept) == (1, 0)
        events: Any = await redis_client.xrange(store.keys.events_key)
        assert [e[0].decode() for e in events[: len(current_events)]] == [
            e.stream_id for e in current_events
        ]
        assert events[len(current_events) :] == old_events[1:]  # the later one, its own id
        assert (moved.events, moved.events_dropped) == (1, 1)
        assert await audit(store) == []
        assert await state(redis_client, old_pattern(node)) == {}


class ClusterModeServer(RedisServer):
    """One server with cluster mode on: no slots needed to be asked what it is."""

    def _config(self) -> str:
        # the cluster bus port, by default the port + 10000, past 65535 for a high port
        lines = ["cluster-enabled yes", "cluster-config-file nodes.conf"]
        return super()._config() + "\n".join([*lines, f"cluster-port {free_port()}", ""])


async def test_on_a_cluster_there_is_nothing_to_move(tmp_path: Path) -> None:
    server = ClusterModeServer(tmp_path)
    server.start()
    try:
        async with Store.from_url(server.url, b"\x02" + os.urandom(32)) as store:
            assert (await store.redis.info("cluster"))["cluster_enabled"] == 1
            assert not await store.layout.pending()
            assert await store.layout.run() == LayoutMove()
    finally:
        server.stop()


@GENERATIONS
async def test_a_daemon_on_the_moved_mailbox_delivers_each_message_once(
    personality: Personality,
    old_code: Path,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The old release kept four messages for bob (lnd took one, never confirmed) and read a
    fifth it did not decide; a daemon of this release leads on that Redis: it moves the
    mailbox first, decides the fifth, and bob, once back, peels each of the five once."""
    async with world(personality, redis_url, tmp_path, confirm_after=0.2) as w:
        now = time.time()
        texts = [f"kept by the old release {i}".encode() for i in range(5)]
        messages = [w.message_for_bob(text) for text in texts]
        fill = OldFill(node=w.node.pubkey, now=now)
        for i, m in enumerate(messages[:4]):
            # kept as the LSP keeps it: peeled by the LSP, for bob
            hop = await peel(m.path_key, m.onion, w.node.key)
            assert isinstance(hop, Forward)
            for_bob = OnionMessage(hop.next_path_key, hop.next_onion)
            fill.put(w.bob.pubkey, w.alice.pubkey, for_bob, now - 10 + i)
        fill.deliver = {w.bob.pubkey: 1}
        last = messages[4]
        fill.journal_entry(entry_for(last.path_key, last.onion), w.alice.pubkey, last, now - 1)
        fill.counters = {"received": 5}  # its scripts counted stored and delivered
        run_old_release(old_code, redis_url, fill)

        with caplog.at_level(logging.INFO, logger="lndmailbox.daemon.old_layout"):
            await w.start_daemon()
        (line,) = [r.getMessage() for r in caplog.records if r.name.endswith("old_layout")]
        size = 4 * (33 + len(messages[0].onion))
        assert line == (
            f"the mailbox is in this release's key layout: moved 1 peer (4 messages, {size} "
            "bytes, 1 of them unconfirmed), 1 journal entry, 5 events, 3 counters"
        )
        await wait_until(
            lambda: _count(w.held_for(w.bob), 5), what="the moved four and the decided fifth"
        )
        assert await state(w.store.redis, old_pattern(w.node.pubkey)) == {}

        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) >= 5, what="delivery to bob")
        await wait_until(lambda: _count(w.held_for(w.bob), 0), what="every delivery confirmed")
        assert sorted(await w.payloads_received(w.bob)) == sorted(texts)
        await counted(w, "confirmed", 5)
        await counted(w, "stored", 4 + 1)  # the old release's four and the fifth
        assert await audit(w.store) == []


async def _count(held: Awaitable[list[StoredMessage]], n: int) -> bool:
    return len(await held) == n


async def test_a_daemon_stands_by_while_a_daemon_of_the_old_release_leads(
    old_code: Path, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling upgrade: this release's daemon comes up beside the old leader and stands
    by (journaling, its health that of a standby, so an upgrade script waiting for it goes
    on); it leads, and moves the mailbox, once the old leader is gone."""
    async with world(Personality.LND_0_21, redis_url, tmp_path) as w:
        fill = OldFill(node=w.node.pubkey, now=time.time(), allow=[w.bob.pubkey])
        fill.lock = "lsp:pid=1:boot=old:pidns=1:0ld"
        run_old_release(old_code, redis_url, fill)
        with caplog.at_level(logging.INFO, logger="lndmailbox.daemon.old_layout"):
            starting = asyncio.create_task(w.start_daemon())

            async def standing_by() -> bool:
                beats = await w.store.control.read_daemons()
                return [(b["role"], b["ready"]) for b in beats.values()] == [("standby", True)]

            await wait_until(standing_by, what="this release's daemon to stand by")

            def said_so() -> bool:
                return any(r.getMessage().startswith("standing by while") for r in caplog.records)

            # (its standby is on lnd's stream a moment before it looks for the old release)
            await wait_until(said_so, what="this release's daemon to say why it stands by")
            assert await w.store.control.lock_owner() is None
            assert not starting.done()
            assert not await w.store.allowlist.contains(w.bob.pubkey)
            await w.store.redis.delete(f"lndmailbox:{w.node.pubkey.hex()}:lock")
            await starting
        assert await w.store.allowlist.contains(w.bob.pubkey)
        said = [r.getMessage() for r in caplog.records if r.name.endswith("old_layout")]
        assert len(said) == 3, said
        assert said[0].startswith("standing by while a daemon of the old release leads")
        assert "lsp:pid=1:boot=old" in said[0]
        assert said[2].endswith("moved 1 counter, 1 allowlist addition")


async def test_a_rolling_upgrade_sends_each_message_once(
    old_code: Path, redis_url: str, tmp_path: Path
) -> None:
    """The supported upgrade of a pair, for real: a daemon of the old release (its own
    code, in a subprocess) leads, this release's daemon stands by beside it on the same
    lnd. The old leader keeps three messages for bob and delivers them once he is back,
    then keeps three more with bob away. Its record of those decisions is gone (as 15 s
    after them, in any upgrade slower than that); it stops (SIGTERM, its lock handed
    over), this release's daemon leads and moves the mailbox. bob peels each of the six
    exactly once: what the standby journaled while the old release led was decided by
    the old leader, not a second time by the new one."""
    async with world(Personality.LND_0_21, redis_url, tmp_path, confirm_after=0.2) as w:
        old = _old_daemon(old_code, w.settings, tmp_path / "old-mailbox")
        try:
            node = w.node.pubkey.hex()

            async def old_leads() -> bool:
                if old.poll() is not None:
                    raise AssertionError(f"the old daemon exited {old.returncode}")
                beats = await w.store.redis.hvals(f"lndmailbox:{node}:daemons")
                return any(json.loads(b).get("ready") for b in beats)

            await wait_until(old_leads, what="the old release's daemon to lead")
            w.task = asyncio.create_task(run(w.settings, stop=w.stop))

            async def standing_by() -> bool:
                beats = await w.store.control.read_daemons()
                return [(b["role"], b["ready"]) for b in beats.values()] == [("standby", True)]

            await wait_until(standing_by, what="this release's daemon to stand by")
            texts = [f"rolling upgrade {i}".encode() for i in range(6)]
            usage = f"lndmailbox:{node}:usage"

            def old_leader_holds(n: int) -> Callable[[], Awaitable[bool]]:
                async def holds() -> bool:
                    held = await w.store.redis.hget(usage, f"messages:{w.bob.pubkey.hex()}")
                    return int(held or 0) == n

                return holds

            for text in texts[:3]:
                await w.alice.send_onion_message(w.message_for_bob(text))
            await wait_until(old_leader_holds(3), what="the old leader to keep three")
            w.bob.connect()
            await wait_until(old_leader_holds(0), what="the old leader to deliver three")
            w.bob.disconnect()
            for text in texts[3:]:
                await w.alice.send_onion_message(w.message_for_bob(text))
            await wait_until(old_leader_holds(3), what="the old leader to keep three more")

            async def old_leader_decided_all() -> bool:
                old_journal = f"lndmailbox:{node}:inbox"
                decided = await w.store.redis.zcard(f"lndmailbox:{node}:decided")
                return decided == 6 and not await w.store.redis.exists(old_journal)

            await wait_until(old_leader_decided_all, what="the old leader to decide all six")
            await w.store.redis.delete(f"lndmailbox:{node}:decided")
            old.terminate()
            assert old.wait(60) == 0
            await wait_until(w._daemon_ready, what="this release's daemon to lead")
        finally:
            if old.poll() is None:
                old.kill()
                old.wait(60)

        async def all_decided() -> bool:
            return await w.store.journal.entries() == []

        # A decision leaves the journal once its message is stored or sent: from here on
        # a message decided twice would be held or received twice.
        await wait_until(all_decided, what="the new leader to decide what the journal held")
        assert len(await w.held_for(w.bob)) == 3
        w.bob.connect()
        await wait_until(lambda: _count(w.held_for(w.bob), 0), what="every delivery confirmed")
        assert sorted(await w.payloads_received(w.bob)) == sorted(texts)
        left = await state(w.store.redis, old_pattern(w.node.pubkey))
        assert set(left) <= {f"lndmailbox:{w.node.pubkey.hex()}:heartbeat"}  # expires (3 s)


def _old_daemon(code: Path, settings: Any, datadir: Path) -> subprocess.Popen[bytes]:
    """A daemon of the old release for the node ``settings`` name, its settings by
    environment (the old release reads the same names)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    for name in (
        "rpcserver",
        "tlscertpath",
        "macaroonpath",
        "network",
        "redis_url",
        "allow_channel_peers",
        "race_window",
        "sweep_interval",
        "confirm_after",
    ):
        value = getattr(settings, name)
        env[f"LNDMAILBOX_{name.upper()}"] = str(value).lower() if value is True else str(value)
    env["LNDMAILBOX_DATADIR"] = str(datadir)
    return subprocess.Popen([sys.executable, "-m", "lndmailbox"], env=env, cwd=code)


# --------------------------------------------------------------------------- mailboxctl


async def ctl(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> tuple[int, str]:
    """mailboxctl with no lnd to ask (a directory without credentials); exit code, output.
    Errors go to stderr, which the output then holds instead."""
    config = tmp_path / "empty.toml"
    config.write_text("")
    flags = ["--config", str(config), "--lnddir", str(tmp_path / "no-lnd")]
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*flags, *argv])
    out, err = capsys.readouterr()
    return code, out if code == 0 else err


async def test_mailboxctl_migrate_finds_the_old_node_moves_it_and_says_what(
    old_code: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    rng: random.Random,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = key(rng)
    fill = old_mailbox(rng, node, now=time.time())
    fill.lock = "lsp:pid=9:boot=b:pidns=1:01d"
    run_old_release(old_code, redis_url, fill)
    before = await state(redis_client, old_pattern(node))

    code, said = await ctl(capsys, tmp_path, "--redis-url", redis_url, "migrate")
    assert code == 1
    assert f"lndmailbox:{node.hex()}:lock is held by lsp:pid=9" in said
    await redis_client.delete(f"lndmailbox:{node.hex()}:lock")
    del before[f"lndmailbox:{node.hex()}:lock"]
    # lnd unreachable: the only node in Redis is found in the old layout
    code, said = await ctl(capsys, tmp_path, "--redis-url", redis_url, "migrate")
    assert code == 0, said
    assert said.startswith("moved 6 peers (15 messages, ")
    assert await state(redis_client, new_pattern(node)) == renamed(before, node)
    code, said = await ctl(capsys, tmp_path, "--redis-url", redis_url, "--json", "migrate")
    assert code == 0, said
    assert json.loads(said) == {"layout": LayoutMove().as_dict()}


@pytest.fixture
def other_redis(tmp_path: Path) -> Iterator[str]:
    """A second standalone Redis: where a mailbox moves to."""
    server = RedisServer(tmp_path / "other-redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def test_mailboxctl_migrate_to_another_redis_copies_checks_and_removes(
    old_code: Path,
    redis_url: str,
    redis_client: aioredis.Redis,
    other_redis: str,
    rng: random.Random,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """From a Redis the old release filled to another one: the old layout is moved first,
    then every key is copied with its expiry, checked, and removed from the source."""
    node = key(rng)
    run_old_release(old_code, redis_url, old_mailbox(rng, node, now=time.time()))
    expected = renamed(await state(redis_client, old_pattern(node)), node)
    to = ["--redis-url", redis_url, "--node", node.hex(), "migrate", "--to", other_redis]

    code, said = await ctl(capsys, tmp_path, *to)
    assert code == 0, said
    assert said.startswith("old key layout: moved 6 peers")
    assert f"copied {len(expected)} keys (" in said
    async with aioredis.Redis.from_url(other_redis) as there:
        assert await state(there, new_pattern(node)) == expected
    async with Store.from_url(other_redis, node) as moved:
        assert await audit(moved) == []
    assert await state(redis_client, f"lndmailbox:*{node.hex()}*") == {}

    # Back again: the destination of this move holds nothing of the node, the source does.
    async with Store.from_url(redis_url, node) as there_now:
        await there_now.allowlist.add([key(rng)])
    back = ["--redis-url", other_redis, "--node", node.hex(), "migrate", "--to", redis_url]
    code, said = await ctl(capsys, tmp_path, *back)
    assert code == 1
    assert "holds this node's mailbox already (1 keys" in said
    async with aioredis.Redis.from_url(other_redis) as there:
        assert await state(there, new_pattern(node)) == expected  # left as it was
    code, said = await ctl(capsys, tmp_path, "--json", *back, "--overwrite")
    assert code == 0, said
    assert json.loads(said)["replaced"] == 1
    assert await state(redis_client, new_pattern(node)) == expected


async def test_mailboxctl_migrate_to_another_redis_moves_the_webhooks_too(
    redis_url: str,
    redis_client: aioredis.Redis,
    other_redis: str,
    rng: random.Random,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The LSPS5 registrations and the clients' last seen are keys of the node: they arrive
    whole, and a client's next request there finds its webhooks."""
    node, alice, bob = key(rng), key(rng), key(rng)
    hooks = [
        (alice, "phone", "https://push.example.com/a?token=1"),
        (alice, "tablet", "https://push.example.com/b?token=2"),
        (bob, "wallet", "https://notify.example.net/c?token=3"),
    ]
    async with Store.from_url(redis_url, node) as source:
        for i, (peer, app, url) in enumerate(hooks):
            await source.webhooks.set(peer, app, url, max_webhooks=5, now_ms=1_000 + i)
        summaries = await source.webhooks.summaries()
    to = ["--redis-url", redis_url, "--node", node.hex(), "migrate", "--to", other_redis]

    code, said = await ctl(capsys, tmp_path, *to)

    assert code == 0, said
    async with Store.from_url(other_redis, node) as moved:
        assert await moved.webhooks.summaries() == summaries
        assert [(w.app_name, w.url) for w in await moved.webhooks.list(alice)] == [
            (app, url) for peer, app, url in hooks if peer == alice
        ]
        assert await moved.webhooks.last_seen(bob) == 1_002
    assert await state(redis_client, f"lndmailbox:*{node.hex()}*") == {}


async def test_a_move_to_another_redis_holds_the_node_lock_on_both_sides_throughout(
    redis_url: str,
    other_redis: str,
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon starting while the copy is under way finds the node's lock held, on the
    source (whose keys the move is about to remove) and on the destination, and so stands
    by as for any leader; the move releases both locks when it is done."""
    node, peer = key(rng), key(rng)
    contender = "lsp:pid=9:boot=b:pidns=1:5tart5late"
    took: list[bool] = []
    check = transfer._check

    async def check_while_a_daemon_starts(source: Store, destination: Store, *a: Any) -> None:
        for store in (source, destination):
            took.append(await store.control.acquire_lock(contender, 1.0))
            owner = await store.control.lock_owner()
            assert (owner or "").startswith("mailboxctl-migrate:"), owner
        await check(source, destination, *a)

    monkeypatch.setattr(transfer, "_check", check_while_a_daemon_starts)
    async with Store.from_url(redis_url, node) as source, Store.from_url(other_redis, node) as to:
        m = message(rng)
        await source.queues.put_many([NewMessage(peer, key(rng), m.path_key, m.onion, time.time())])
        copied = await transfer.move_mailbox(source, to)
        assert copied.keys > 0
        assert took == [False, False]
        assert (await source.control.lock_owner(), await to.control.lock_owner()) == (None, None)
        assert len(await to.queues.held(peer)) == 1
        assert await source.queues.held(peer) == []


async def test_mailboxctl_migrate_to_refuses_while_a_daemon_runs_and_keeps_a_bad_copy_source(
    redis_url: str,
    redis_client: aioredis.Redis,
    other_redis: str,
    rng: random.Random,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node, peer = key(rng), key(rng)
    async with Store.from_url(redis_url, node) as store:
        await store.queues.put_many(
            [NewMessage(peer, key(rng), key(rng), rng.randbytes(1366), time.time())]
        )
        assert await store.control.acquire_lock("lsp:pid=3:boot=b:pidns=1:beef", lease=60)
    expected = await state(redis_client, new_pattern(node))
    itself = ["--redis-url", redis_url, "--node", node.hex(), "migrate", "--to"]
    code, said = await ctl(
        capsys, tmp_path, *itself, redis_url.replace("127.0.0.1", "localhost"), "--overwrite"
    )
    assert code == 1
    assert "the destination is the source" in said
    to = ["--redis-url", redis_url, "--node", node.hex(), "migrate", "--to", other_redis]
    code, said = await ctl(capsys, tmp_path, *to)
    assert code == 1
    assert "a daemon runs on the source" in said
    assert "lsp:pid=3" in said

    await redis_client.delete(f"lndmailbox:{{{node.hex()}}}:lock")
    async with Store.from_url(other_redis, node) as there:
        await there.control.write_daemon("standby-1", {"role": "standby"}, stale=5, ttl=10)
    code, said = await ctl(capsys, tmp_path, *to)
    assert code == 1
    assert "a daemon runs on the destination" in said
    async with aioredis.Redis.from_url(other_redis) as destination:
        await destination.flushall()

    restore = transfer._restore

    async def losing_one(store: Store, dumped: dict[str, Any]) -> None:
        await restore(store, dict(list(dumped.items())[1:]))

    monkeypatch.setattr(transfer, "_restore", losing_one)
    code, said = await ctl(capsys, tmp_path, *to)
    assert code == 1
    assert "the copy lacks" in said
    assert "the source is left as it was" in said
    assert await state(redis_client, new_pattern(node)) == {
        k: v for k, v in expected.items() if not k.endswith(":lock")
    }
