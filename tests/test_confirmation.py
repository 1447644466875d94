"""Confirmed delivery: what lnd took waits in Redis, unconfirmed, until its peer stayed for
the window or spoke since; a peer that leaves first gets it again (docs/architecture.md).

The store's scripts against a real Redis, the confirmations with the deliverer, and the
daemon end to end on simnet (both lnd generations). A delivered message is proved by the
recipient peeling it with its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from simnet import Personality

from lndmailbox.clock import SystemClock
from lndmailbox.daemon.confirmations import Confirmations
from lndmailbox.daemon.deliverer import Deliverer
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.daemon.webhook import Notifier
from lndmailbox.errors import StoreUnavailableError
from lndmailbox.onion import BlindedHopSpec, message_via
from lndmailbox.store import Limits, PutStatus, Queues, Store, StoredMessage
from lndmailbox.store.audit import audit
from tests.daemon_harness import (
    PAYLOAD_TYPE,
    World,
    counted,
    counter,
    stored_count,
    wait_until,
    world,
)
from tests.store_helpers import put_one

NOW = 1_700_000_000.0
NODE = bytes.fromhex("02" + "77" * 32)
GENERATIONS = [Personality.LND_0_20, Personality.LND_0_21]


def pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


async def put(store: Store, peer: bytes, now: float = NOW, **kw: float) -> str:
    result = await put_one(store, peer, pubkey(), pubkey(), os.urandom(1366), now, **kw)
    assert result.status is PutStatus.STORED, result
    return result.message_id


async def deliver(store: Store, peer: bytes, count: int, sent_ms: int) -> list[StoredMessage]:
    """lnd takes the peer's ``count`` oldest messages: into its unconfirmed list."""
    ready, _ = await store.queues.peek(peer, NOW, limit=count)
    assert await store.queues.move_delivered(ready, sent_ms) == len(ready)
    return ready


async def told(store: Store, peer: bytes) -> list[tuple[str, str]]:
    return [(e.kind, e.message_id) for e in await store.events.read(count=1000) if e.peer == peer]


# --------------------------------------------------------------------------- the store


async def test_the_caps_count_unconfirmed_messages(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=2, max_bytes_total=3 * 1399))
    bob, carol = pubkey(), pubkey()
    a, b = await put(store, bob), await put(store, bob)
    await deliver(store, bob, 2, 1)
    # the window is no way round the per-peer cap: the oldest, unconfirmed, gives way
    c = await put_one(store, bob, pubkey(), pubkey(), os.urandom(1366), NOW)
    assert c.evicted == (a,)
    assert [u.message.id for u in await store.queues.unconfirmed(bob)] == [b]
    assert [m.id for m in await store.queues.messages(bob)] == [c.message_id]
    # nor round the node's: b and c held, one more fits, the next is refused
    await put(store, carol)
    refused = await put_one(store, carol, pubkey(), pubkey(), os.urandom(1366), NOW)
    assert refused.status is PutStatus.REJECTED_FULL
    stats = await store.queues.stats()
    assert (stats.messages, stats.unconfirmed, stats.peers_with_mail) == (3, 1, 2)
    # a sender's replay of an unconfirmed message is a duplicate: it is still held
    (held,) = await store.queues.unconfirmed(bob)
    again = await put_one(
        store, bob, pubkey(), held.message.path_key, held.message.onion, NOW, ttl=None
    )
    assert (again.status, again.message_id) == (PutStatus.DUPLICATE, b)
    assert await audit(store) == []


async def test_a_return_puts_them_in_front_in_order_and_the_bound_gives_up(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE)
    bob = pubkey()
    ids = [await put(store, bob, NOW + i) for i in range(4)]
    await deliver(store, bob, 3, 1)
    back, gone = await store.queues.requeue(bob, max_redeliveries=1)
    assert ([m.id for m in back], gone) == (ids[:3], [])
    queued = await store.queues.messages(bob)
    assert [(m.id, m.redeliveries) for m in queued] == [(i, 1) for i in ids[:3]] + [(ids[3], 0)]
    assert await store.queues.unconfirmed(bob) == []
    # out again, and the peer leaves again: at the bound they are given up
    await deliver(store, bob, 2, 2)
    back, gone = await store.queues.requeue(bob, max_redeliveries=1)
    assert (back, [m.id for m in gone]) == ([], ids[:2])
    assert [m.id for m in await store.queues.messages(bob)] == ids[2:]
    assert await told(store, bob) == [
        *[("stored", i) for i in ids],
        *[("delivered", i) for i in ids[:3]],
        *[("redelivered", i) for i in ids[:3]],
        *[("delivered", i) for i in ids[:2]],
        *[("unconfirmed", i) for i in ids[:2]],
    ]
    counters = await store.events.counters()
    assert (counters["redelivered"], counters["unconfirmed"]) == (3, 2)
    assert (await store.queues.stats()).messages == 2
    assert await store.queues.requeue(bob, 1) == ([], []), "nothing unconfirmed: nothing to do"
    assert await audit(store) == []


async def test_a_return_takes_only_what_lnd_took_before_the_departure(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE)
    bob = pubkey()
    ids = [await put(store, bob, NOW + i) for i in range(3)]
    await deliver(store, bob, 1, 1000)
    await deliver(store, bob, 1, 2000)  # on the connection after the departure
    back, gone = await store.queues.requeue(bob, 3, sent_by=1500)
    assert ([m.id for m in back], gone) == ([ids[0]], [])
    assert [(u.message.id, u.sent_ms) for u in await store.queues.unconfirmed(bob)] == [
        (ids[1], 2000)
    ]
    assert [m.id for m in await store.queues.messages(bob)] == [ids[0], ids[2]]
    back, _ = await store.queues.requeue(bob, 3, sent_by=2000)  # at the cutoff: back too
    assert [m.id for m in back] == [ids[1]]
    assert await store.queues.requeue(bob, 3, sent_by=0) == ([], [])
    assert (await store.queues.stats()).messages == 3
    assert await audit(store) == []


async def test_only_the_delivery_it_was_made_for_is_confirmed(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE)
    bob = pubkey()
    first = await put(store, bob)
    await deliver(store, bob, 1, 1000)
    await store.queues.requeue(bob, 3)
    await deliver(store, bob, 1, 2000)
    # a deadline left from the first delivery confirms nothing of the second
    assert await store.queues.confirm(bob, [(first, 1000)]) == []
    (confirmed,) = await store.queues.confirm(bob, [(first, 2000)])
    assert (confirmed.id, confirmed.redeliveries) == (first, 1)
    assert await store.queues.held(bob) == []
    assert ("confirmed", first) in await told(store, bob)
    assert (await store.queues.stats()).messages == 0
    assert await audit(store) == []


async def test_unconfirmed_messages_expire_with_the_ttl(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE)
    bob = pubkey()
    short, long = await put(store, bob, ttl=5), await put(store, bob, ttl=100)
    await put(store, bob, ttl=5)
    await deliver(store, bob, 2, 1)
    expired = await store.queues.sweep_expired(NOW + 10)
    assert (len(expired), expired[0].id) == (2, short), "the unconfirmed one and the queued one"
    assert [u.message.id for u in await store.queues.unconfirmed(bob)] == [long]
    assert await store.queues.messages(bob) == []
    assert (await store.queues.stats()).messages == 1
    assert await audit(store) == []


async def test_a_list_redis_dropped_is_booked_as_expired(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE)
    bob = pubkey()
    for i in range(3):
        await put(store, bob, NOW + i)
    await deliver(store, bob, 2, 1)
    await redis_client.delete(store.keys.unconfirmed_key(bob))  # as if Redis expired it
    assert await audit(store) != []
    await put(store, bob)  # the next write of the peer books what is left
    assert await audit(store) == []
    assert (await store.events.counters())["expired"] == 2
    assert (await store.queues.stats()).messages == 2


async def test_purge_takes_unconfirmed_messages_too(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE)
    bob = pubkey()
    ids = [await put(store, bob, NOW + i) for i in range(3)]
    await deliver(store, bob, 2, 1)
    assert await store.queues.purge(bob, ids[1]) == 1
    assert [m.id for m in await store.queues.held(bob)] == [ids[0], ids[2]]
    assert await store.queues.purge(bob) == 2
    assert await store.queues.held(bob) == []
    assert await store.queues.peers_with_mail() == []
    assert await audit(store) == []


# --------------------------------------------------------------------------- the daemon's parts


@dataclass
class SendWith:
    """lnd's part of a delivery, played by ``play``."""

    play: Callable[[bytes, bytes, bytes], Awaitable[None]]

    async def send(self, peer: bytes, path_key: bytes, onion: bytes) -> None:
        await self.play(peer, path_key, onion)


class KeptNotifier(Notifier):
    """Keeps what the Reporter hands the webhook (no HTTP)."""

    def __init__(self) -> None:
        self.events: list[Mapping[str, object]] = []

    def submit(self, event: Mapping[str, object]) -> None:
        self.events.append(event)


@dataclass
class Parts:
    deliverer: Deliverer
    confirmations: Confirmations
    peers: PeerTracker


@contextlib.asynccontextmanager
async def delivering_to(
    peer: bytes,
    store: Store,
    send: Callable[[bytes, bytes, bytes], Awaitable[None]],
    *,
    queues: Queues | None = None,
    confirm_after: float = 3600.0,
    notifier: Notifier | None = None,
) -> AsyncIterator[Parts]:
    """A deliverer that finds ``peer`` online, and its confirmations, running."""
    clock = SystemClock()
    peers = PeerTracker(clock)
    peers.mark(peer, True)
    reporter = Reporter(node=NODE, metrics=Metrics(), events=store.events, notifier=notifier)
    confirmations = Confirmations(
        queues=queues or store.queues,
        peers=peers,
        reporter=reporter,
        clock=clock,
        confirm_after=confirm_after,
        max_redeliveries=3,
    )
    deliverer = Deliverer(
        queues=queues or store.queues,
        sender=SendWith(send),
        peers=peers,
        confirmations=confirmations,
        reporter=reporter,
        clock=clock,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(confirmations.run(stop))
    try:
        yield Parts(deliverer, confirmations, peers)
    finally:
        await deliverer.close()
        stop.set()
        await task


async def test_hearing_from_the_peer_confirms_at_once(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE)
    bob = pubkey()
    ids = [await put(store, bob, time.time() + i) for i in range(3)]
    taken: list[bytes] = []

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        taken.append(onion)

    webhook = KeptNotifier()
    async with delivering_to(bob, store, send, notifier=webhook) as parts:
        before = SystemClock().monotonic()
        parts.deliverer.kick(bob)

        async def unconfirmed(n: int) -> bool:
            return len(await store.queues.unconfirmed(bob)) == n

        await wait_until(lambda: unconfirmed(3), what="lnd to take all three")
        parts.confirmations.heard_from(bob, at=before)  # read before the sends: no proof
        parts.confirmations.heard_from(pubkey())  # someone else
        parts.confirmations.heard_from(bob)  # bob spoke after them: he is there
        await wait_until(lambda: unconfirmed(0), what="the three to be confirmed")
    assert len(taken) == 3
    assert [k for k, i in await told(store, bob) if k == "confirmed"] == ["confirmed"] * 3
    assert [i for k, i in await told(store, bob) if k == "confirmed"] == ids
    assert [(e["event"], e["message_id"]) for e in webhook.events] == [
        *[("delivered", i) for i in ids],
        *[("confirmed", i) for i in ids],
    ]
    assert await audit(store) == []


class RedisGoneForMoves(Queues):
    """Real queues that cannot move what lnd took: the daemon dies between the two."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.redis, store.keys, store.limits, events_maxlen=store.events_maxlen)

    async def move_delivered(self, messages: Sequence[StoredMessage], sent_ms: int) -> int:
        raise StoreUnavailableError("Redis is unavailable: connection refused")


async def test_what_lnd_took_but_was_never_moved_is_sent_again(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, NODE)
    bob = pubkey()
    await put(store, bob, time.time())
    taken: list[bytes] = []

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        taken.append(onion)

    async with delivering_to(bob, store, send, queues=RedisGoneForMoves(store)) as parts:
        parts.deliverer.kick(bob)
        await wait_until(lambda: len(taken) == 1, what="lnd to take it")
    assert len(await store.queues.messages(bob)) == 1, "still queued"
    async with delivering_to(bob, store, send) as parts:  # the next daemon
        parts.deliverer.kick(bob)
        await wait_until(lambda: len(taken) == 2, what="it to be sent again")
    assert taken[0] == taken[1]
    assert len(await store.queues.unconfirmed(bob)) == 1


class CountedRequeues(Queues):
    """Real queues that note every return of a peer's unconfirmed mail (requeue.lua)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.redis, store.keys, store.limits, events_maxlen=store.events_maxlen)
        self.requeued: list[bytes] = []

    async def requeue(
        self, peer: bytes, max_redeliveries: int, *, sent_by: int | None = None
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        self.requeued.append(peer)
        return await super().requeue(peer, max_redeliveries, sent_by=sent_by)


def held_in_memory(confirmations: Confirmations) -> dict[str, int]:
    """How many entries each of the confirmations' collections holds."""
    return {
        name: len(value)
        for name, value in vars(confirmations).items()
        if isinstance(value, dict | set | list)
    }


async def test_strangers_coming_and_going_cost_nothing(redis_client: aioredis.Redis) -> None:
    """Any node can connect with fresh keys and leave: one that has no unconfirmed mail
    costs neither memory nor a script; bob, who has some, gets his back."""
    store = Store(redis_client, NODE)
    queues = CountedRequeues(store)
    bob = pubkey()
    await put(store, bob, time.time())

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        pass

    async with delivering_to(bob, store, send, queues=queues) as parts:
        for _ in range(500):
            stranger = pubkey()
            parts.peers.mark(stranger, True)
            parts.peers.mark(stranger, False)
            parts.confirmations.peer_went_offline(stranger)
        parts.deliverer.kick(bob)

        async def taken() -> bool:
            return len(await store.queues.unconfirmed(bob)) == 1

        await wait_until(taken, what="lnd to take bob's")
        await parts.deliverer.close()  # the drain is over
        parts.peers.mark(bob, False)
        parts.confirmations.peer_went_offline(bob)

        async def back() -> bool:
            return (await store.events.counters()).get("redelivered", 0) == 1

        await wait_until(back, what="bob's mail back in his queue")

        def forgotten() -> bool:
            return not any(held_in_memory(parts.confirmations).values())

        await wait_until(forgotten, what="nothing held in memory")
    assert queues.requeued == [bob]


class GatedRequeues(Queues):
    """Real queues whose first return of unconfirmed mail waits for ``gate``."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.redis, store.keys, store.limits, events_maxlen=store.events_maxlen)
        self.gate = asyncio.Event()
        self.calls = 0

    async def requeue(
        self, peer: bytes, max_redeliveries: int, *, sent_by: int | None = None
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
        return await super().requeue(peer, max_redeliveries, sent_by=sent_by)


async def test_a_departure_during_a_return_takes_nothing_of_the_next_connection(
    redis_client: aioredis.Redis,
) -> None:
    """bob's drain sees him gone before the peer follower tells of it, and sends his mail
    back; his next drain does that return first, and the follower's word of the departure
    comes while it runs. bob is back by then: what that drain hands lnd on his new
    connection waits for its own confirmation, it does not go back again."""
    store = Store(redis_client, NODE)
    queues = GatedRequeues(store)
    bob = pubkey()
    first, second = await put(store, bob, time.time()), await put(store, bob, time.time() + 1)

    async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
        pass

    def now_ms() -> int:
        return int(time.time() * 1000)

    async with delivering_to(bob, store, send, queues=queues) as parts:
        c, peers = parts.confirmations, parts.peers
        next_drain_ready = asyncio.Event()

        async def next_drain() -> None:
            async with c.delivering(bob) as drain:
                await next_drain_ready.wait()
                sent = now_ms()
                (message,) = await deliver(store, bob, 1, sent)
                c.sent(bob, [(message.id, sent)], drain)

        async with c.delivering(bob) as drain:
            sent = now_ms()
            (m,) = await deliver(store, bob, 1, sent)
            c.sent(bob, [(m.id, sent)], drain)
            waiting = asyncio.create_task(next_drain())  # for this drain to end
            await asyncio.sleep(0.05)
            peers.mark(bob, False)  # the tracker knows; the follower has not told yet
            sent = now_ms()
            (m,) = await deliver(store, bob, 1, sent)
            c.sent(bob, [(m.id, sent)], drain)  # bob is gone: both go back
        await wait_until(lambda: queues.calls == 1, what="the next drain's return")
        c.peer_went_offline(bob)  # the follower's word, while the return runs
        peers.mark(bob, True)  # bob back, on a new connection
        queues.gate.set()

        async def both_back() -> bool:
            return (await store.events.counters()).get("redelivered", 0) == 2

        await wait_until(both_back, what="both messages back in bob's queue")
        next_drain_ready.set()
        await waiting
        async with c.delivering(bob):
            pass  # after every return that was due (a drain does them first)
        unconfirmed = await store.queues.unconfirmed(bob)
        assert [u.message.id for u in unconfirmed] == [first], "sent on the new connection"
        assert [m.id for m in await store.queues.messages(bob)] == [second]
        assert (await store.events.counters()).get("redelivered") == 2
    assert await audit(store) == []


async def test_one_peers_damaged_keys_hold_up_no_other_confirmation(
    redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """bob's queue key holds something else (edited by hand): every script of his fails,
    for as long as it stays so. carol's mail is confirmed all the same, and bob's once his
    key is mended."""
    store = Store(redis_client, NODE)
    bob, carol = pubkey(), pubkey()
    clock = SystemClock()
    peers = PeerTracker(clock)
    confirmations = Confirmations(
        queues=store.queues,
        peers=peers,
        reporter=Reporter(node=NODE, metrics=Metrics(), events=store.events),
        clock=clock,
        confirm_after=0.05,
        max_redeliveries=3,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(confirmations.run(stop))
    try:
        for peer in (bob, carol):  # bob first: his deadline passes first
            peers.mark(peer, True)
            async with confirmations.delivering(peer) as drain:
                await put(store, peer, time.time())
                sent = int(time.time() * 1000)
                (m,) = await deliver(store, peer, 1, sent)
                if peer == bob:
                    await redis_client.set(store.keys.queue_key(bob), b"not a list")
                confirmations.sent(peer, [(m.id, sent)], drain)

        async def confirmed(n: int) -> bool:
            return (await store.events.counters()).get("confirmed", 0) == n

        await wait_until(lambda: confirmed(1), what="carol's confirmation")
        assert await store.queues.unconfirmed(carol) == []
        assert len(await store.queues.unconfirmed(bob)) == 1
        assert any(
            r.levelno == logging.WARNING and bob.hex() in r.getMessage() for r in caplog.records
        ), "the failure is told, naming bob"

        await redis_client.delete(store.keys.queue_key(bob))  # mended
        await wait_until(lambda: confirmed(2), what="bob's confirmation")
        assert await store.queues.unconfirmed(bob) == []
    finally:
        stop.set()
        await task
    assert not any(held_in_memory(confirmations).values())
    assert await audit(store) == []


# --------------------------------------------------------------------------- end to end


def lose_and_leave(w: World, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """bob's connection drops right after lnd took a message for him: lnd's send succeeds,
    bob never reads it, and lnd reports him offline. Returns what he lost."""
    lost: list[bytes] = []

    def deliver(msg_type: int, data: bytes) -> None:
        lost.append(data)
        w.bob.disconnect()

    monkeypatch.setattr(w.bob, "_deliver", deliver)
    return lost


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: f"lnd{p.value}")
@pytest.mark.parametrize("leaves", ["as lnd takes it", "once it is unconfirmed"])
async def test_a_recipient_that_leaves_right_after_lnd_took_it_gets_it_again(
    personality: Personality,
    leaves: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """His connection drops within the window: while lnd's send is under way (the daemon
    hears of it before or after it moved the message to the unconfirmed list), or once the
    message waits there (a window no test run outlasts)."""
    async with world(personality, redis_url, tmp_path, confirm_after=30.0) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"held htlc available"))
        await stored_count(w, 1)
        (stored,) = await w.stored_for(w.bob)
        if leaves == "as lnd takes it":
            lost = lose_and_leave(w, monkeypatch)
            w.bob.connect()
            await counted(w, "delivered", 1)
            assert len(lost) == 1
        else:
            w.bob.connect()
            await counted(w, "delivered", 1)
            assert len(await w.store.queues.unconfirmed(w.bob.pubkey)) == 1
            w.bob.disconnect()
            w.bob.received.clear()  # it never reached his phone
        await counted(w, "redelivered", 1)
        (back,) = await w.stored_for(w.bob)
        assert (back.id, back.redeliveries) == (stored.id, 1), "in its queue again"

        monkeypatch.undo()
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery again")
        assert await w.payloads_received(w.bob) == [b"held htlc available"]
        await counted(w, "delivered", 2)
        (waiting,) = await w.store.queues.unconfirmed(w.bob.pubkey)
        assert waiting.message.id == stored.id, "waiting for its confirmation again"
        assert [k for k, i in await told(w.store, w.bob.pubkey) if i == stored.id] == [
            "stored",
            "delivered",
            "redelivered",
            "delivered",
        ]
        assert await audit(w.store) == []


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: f"lnd{p.value}")
async def test_a_recipient_that_stays_has_it_confirmed(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with world(personality, redis_url, tmp_path, confirm_after=0.5) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"safe to delete"))
        await stored_count(w, 1)
        (stored,) = await w.stored_for(w.bob)
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery to bob")
        assert await w.payloads_received(w.bob) == [b"safe to delete"]
        await counted(w, "confirmed", 1)
        assert [k for k, i in await told(w.store, w.bob.pubkey) if i == stored.id] == [
            "stored",
            "delivered",
            "confirmed",
        ]
        assert await w.held_for(w.bob) == []
        assert (await w.store.queues.stats()).messages == 0
        keys = [k async for k in w.store.redis.scan_iter(match=f"*{w.bob.pubkey.hex()}*")]
        assert keys == [], "nothing of bob's left in Redis"
        assert await audit(w.store) == []
        assert len(w.bob.received) == 1


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: f"lnd{p.value}")
async def test_the_recipients_answer_confirms_at_once(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    """bob reads his mail and answers through the node (a wallet's release_held_htlc for
    its held_htlc_available): the answer confirms it, long before the window would."""
    async with world(personality, redis_url, tmp_path, confirm_after=3600.0) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"held htlc available"))
        await stored_count(w, 1)
        (stored,) = await w.stored_for(w.bob)
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery to bob")
        assert await w.payloads_received(w.bob) == [b"held htlc available"]

        answers = 0

        async def answered() -> bool:
            # Only what lnd published after it took bob's mail counts, and the reader can
            # only bound that moment from below (the stream's lag): bob answers again until
            # one is late enough to prove it, as a wallet's further traffic would.
            nonlocal answers
            if await counter(w, "confirmed") == 1:
                return True
            lsp = BlindedHopSpec(w.node.pubkey, next_node_id=w.alice.pubkey)
            _, answer = message_via([lsp, w.alice.pubkey], {PAYLOAD_TYPE: b"release held htlc"})
            await w.bob.send_onion_message(answer)
            answers += 1
            await asyncio.sleep(0.2)
            return False

        await wait_until(answered, what="bob's answer to confirm his mail")
        print(f"confirmed after {answers} answers from bob")
        assert [k for k, i in await told(w.store, w.bob.pubkey) if i == stored.id] == [
            "stored",
            "delivered",
            "confirmed",
        ]
        assert await w.held_for(w.bob) == []
        assert await audit(w.store) == []


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: f"lnd{p.value}")
async def test_at_the_bound_it_is_given_up_unconfirmed(
    personality: Personality, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(personality, redis_url, tmp_path, confirm_after=30.0, max_redeliveries=1) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"never read"))
        await stored_count(w, 1)
        (stored,) = await w.stored_for(w.bob)
        lost = lose_and_leave(w, monkeypatch)
        w.bob.connect()
        await counted(w, "redelivered", 1)
        w.bob.connect()
        await counted(w, "unconfirmed", 1)
        assert len(lost) == 2
        assert await counted_now(w) == {"delivered": 2, "redelivered": 1, "unconfirmed": 1}
        assert [k for k, i in await told(w.store, w.bob.pubkey) if i == stored.id] == [
            "stored",
            "delivered",
            "redelivered",
            "delivered",
            "unconfirmed",
        ]
        assert await w.held_for(w.bob) == []
        assert await audit(w.store) == []


async def counted_now(w: World) -> dict[str, int]:
    counters = await w.store.events.counters()
    return {k: counters.get(k, 0) for k in ("delivered", "redelivered", "unconfirmed")}


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: f"lnd{p.value}")
@pytest.mark.parametrize("bob_meanwhile", ["dropped and came back", "left"])
async def test_a_restart_knows_nothing_of_the_time_no_daemon_watched(
    personality: Personality, bob_meanwhile: str, redis_url: str, tmp_path: Path
) -> None:
    """No daemon saw bob's connection while none ran: online at the next start or not, he
    may have lost what lnd took for him, so he gets it again (a duplicate if he had it)."""
    async with world(personality, redis_url, tmp_path, confirm_after=30.0) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"across a restart"))
        await stored_count(w, 1)
        w.bob.connect()
        await counted(w, "delivered", 1)
        await w.stop_daemon()
        assert len(await w.store.queues.unconfirmed(w.bob.pubkey)) == 1, "crash-safe"

        w.bob.disconnect()
        w.bob.received.clear()  # his phone never read it
        if bob_meanwhile == "dropped and came back":
            w.bob.connect()  # online when the next daemon starts
        await w.start_daemon(confirm_after=0.5)
        await counted(w, "redelivered", 1)
        w.bob.connect()
        await wait_until(lambda: len(w.bob.received) == 1, what="delivery again")
        await counted(w, "confirmed", 1)
        assert await w.payloads_received(w.bob) == [b"across a restart"]
        assert await w.held_for(w.bob) == []
        assert await audit(w.store) == []


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: f"lnd{p.value}")
async def test_an_lnd_restart_under_an_unconfirmed_delivery_sends_it_again(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    """lnd's restart drops every connection; its peers are back before the daemon's peer
    events are, so no PEER_OFFLINE ever tells of it: online on both sides of the gap, bob
    gets what was not confirmed again."""
    async with world(personality, redis_url, tmp_path, confirm_after=30.0) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"before lnd restarts"))
        await stored_count(w, 1)
        w.bob.connect()
        await counted(w, "delivered", 1)
        w.bob.received.clear()  # lost with the connection lnd's restart dropped

        await w.node.stop()
        await w.node.start()  # bob reconnects at once, as lnd's persistent peers do
        w.alice.connect()
        await counted(w, "redelivered", 1)
        await wait_until(lambda: len(w.bob.received) == 1, within=30, what="delivery again")
        assert await w.payloads_received(w.bob) == [b"before lnd restarts"]
        await counted(w, "delivered", 2)
        assert await audit(w.store) == []


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: f"lnd{p.value}")
async def test_no_deadline_passes_while_lnd_is_away(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    """lnd stops right after it took bob's message and stays away past the message's
    deadline: the daemon cannot see bob's connection drop (lnd's peer events went with
    lnd), so nothing is confirmed until they are back, and then bob gets it again."""
    window = 1.5
    async with world(personality, redis_url, tmp_path, confirm_after=window) as w:
        await w.start_daemon()
        await w.alice.send_onion_message(w.message_for_bob(b"just before lnd stops"))
        await stored_count(w, 1)
        (stored,) = await w.stored_for(w.bob)
        w.bob.connect()
        await counted(w, "delivered", 1)
        w.bob.received.clear()  # lost with the connection lnd's stop dropped

        await w.node.stop()
        await asyncio.sleep(window + 1.0)  # lnd away well past the message's deadline
        await w.node.start()  # bob reconnects at once
        w.alice.connect()
        await counted(w, "redelivered", 1)
        await wait_until(lambda: len(w.bob.received) == 1, within=30, what="delivery again")
        assert await w.payloads_received(w.bob) == [b"just before lnd stops"]
        await counted(w, "confirmed", 1)  # bob stays this time
        assert [k for k, i in await told(w.store, w.bob.pubkey) if i == stored.id] == [
            "stored",
            "delivered",
            "redelivered",
            "delivered",
            "confirmed",
        ]
        assert await w.held_for(w.bob) == []
        assert await audit(w.store) == []
