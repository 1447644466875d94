"""Floods: what peers send cannot wash the events of real mail out of the stream, nor fill
the log (issue 11, "Floods").

The real daemon (in process), simnet on both lnd generations and a real Redis. A flood of
messages to peers the mailbox does not serve, then a flood of replays of one stored
message: the ``stored`` entry from before is still in the stream, every drop and duplicate
is counted and summed in ``summary`` entries, and the daemon's log grows by a handful of
lines. A flood of one allowed, offline peer past its cap: the entries of the mail it really
kept stay, and its churn is summarized.

The CI form sends ``FLOOD`` messages of each kind: more than the 10,000 entries the stream
used to be capped at, so that the old stream would have lost the ``stored`` entry. The
issue's full 20,000 + 20,000 runs under ``@pytest.mark.long``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from coincurve import PrivateKey
from simnet import Personality

from lndmailbox.cli.events import event_json, event_line
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.onion import BlindedHopSpec, message_via
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import Event, Limits, PutStatus, Store
from lndmailbox.store.events import DEFAULT_SUMMARY_INTERVAL, stream_bound
from tests.daemon_harness import PAYLOAD_TYPE, World, counter, wait_until, world
from tests.store_helpers import put_one

FLOOD = 10_500
"""Messages of each flood in the CI form: past the old stream's 10,000 entries."""
FULL_FLOOD = 20_000
LOG_LINES_BOUND = 60
"""The most log lines a whole flood scenario may add (measured: see docs/notifications.md)."""
GENERATIONS = [Personality.LND_0_20, Personality.LND_0_21]


class _LineCounter(logging.Handler):
    """Counts the records the daemon's loggers write at INFO or above (what reaches the log
    at the default ``--log-level info``)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("lndmailbox"):
            self.records.append(record)


@contextmanager
def log_lines() -> Iterator[_LineCounter]:
    """The daemon's log records at ``--log-level info`` while in the block (the in-process
    daemon leaves logging as it finds it: this sets what ``configure_logging`` would)."""
    handler = _LineCounter()
    root = logging.getLogger()
    ours = logging.getLogger("lndmailbox")
    level = ours.level
    ours.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


def node_id(rng: random.Random) -> bytes:
    return PrivateKey(rng.randbytes(32)).public_key.format()


def to_strangers(w: World, n: int, rng: random.Random) -> list[OnionMessage]:
    """``n`` messages through the LSP, each to a random node id that is nobody's peer."""
    out = []
    for _ in range(n):
        stranger = node_id(rng)
        _, message = message_via(
            [BlindedHopSpec(w.node.pubkey, next_node_id=stranger), stranger],
            {PAYLOAD_TYPE: b"flood"},
        )
        out.append(message)
    return out


async def send_all(w: World, messages: list[OnionMessage], *, times: int = 1) -> None:
    for _ in range(times):
        for message in messages:
            await w.alice.send_onion_message(message)


async def reach(w: World, name: str, value: int, within: float) -> None:
    async def reached() -> bool:
        return await counter(w, name) >= value

    try:
        await wait_until(reached, within=within, what=f"counter {name} >= {value}")
    except AssertionError:
        print("counters:", await w.store.events.counters())
        raise


async def all_events(w: World) -> list[Event]:
    out: list[Event] = []
    last = "0-0"
    while batch := await w.store.events.read(last, count=1000):
        out.extend(batch)
        last = batch[-1].stream_id
    return out


def summed(events: list[Event], of: str, reason: str = "") -> int:
    return sum(e.count for e in events if e.kind == "summary" and (e.of, e.reason) == (of, reason))


async def strangers_then_replays(
    personality: Personality, redis_url: str, tmp_path: Path, flood: int
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"seed={seed} flood={flood} personality={personality.name}")
    rng = random.Random(seed)
    async with world(personality, redis_url, tmp_path) as w:
        # lnd 0.21's own ingress buckets (64 KB/s a peer, 640 KB/s in all) slow one peer's
        # flood but not one sent over ten channels: the mailbox must hold either way.
        w.node.onion_rate_limits = None
        await w.start_daemon()
        real = w.message_for_bob(b"real mail")
        await w.alice.send_onion_message(real)
        await reach(w, "stored", 1, within=10)
        (stored,) = [e for e in await all_events(w) if e.kind == "stored"]
        strangers = to_strangers(w, flood, rng)
        with log_lines() as lines:
            started = time.monotonic()
            await send_all(w, strangers)
            await reach(w, "dropped:not_allowed", flood, within=60)
            await send_all(w, [real], times=flood)
            await reach(w, "duplicate", flood, within=60)
            took = time.monotonic() - started
            during = len(lines.records)
            await w.stop_daemon()  # ends the summary interval
        events = await all_events(w)
        print(
            f"{2 * flood} messages in {took:.1f}s; log lines during the floods: {during}, "
            f"with the stop: {len(lines.records)}; stream entries: {len(events)}"
        )
        for record in lines.records:
            print("  ", record.getMessage())
        assert stored in events, "the stored entry of real mail is still in the stream"
        counters = await w.store.events.counters()
        assert counters["dropped:not_allowed"] == flood
        assert counters["duplicate"] == flood
        assert summed(events, "dropped", "not_allowed") == flood
        assert summed(events, "duplicate") == flood
        assert len(events) < 20, "one entry per kind and reason per interval, not per message"
        assert len(lines.records) <= LOG_LINES_BOUND


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: p.name)
async def test_floods_of_strangers_and_replays_keep_the_stored_entry(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    await strangers_then_replays(personality, redis_url, tmp_path, FLOOD)


@pytest.mark.long
@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: p.name)
async def test_full_floods_of_strangers_and_replays_keep_the_stored_entry(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    await strangers_then_replays(personality, redis_url, tmp_path, FULL_FLOOD)


CAP = 8


async def capped_peer_flood(
    personality: Personality, redis_url: str, tmp_path: Path, flood: int
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"seed={seed} flood={flood} personality={personality.name}")
    rng = random.Random(seed)
    async with world(personality, redis_url, tmp_path, max_messages_per_peer=CAP) as w:
        w.node.onion_rate_limits = None
        await w.start_daemon()
        for i in range(3):
            await w.alice.send_onion_message(w.message_for_bob(b"real %d" % i))
        await reach(w, "stored", 3, within=10)
        real = [e for e in await all_events(w) if e.kind == "stored"]
        churn = [w.message_for_bob(rng.randbytes(16)) for _ in range(flood)]
        with log_lines() as lines:
            started = time.monotonic()
            await send_all(w, churn)
            await reach(w, "stored", 3 + flood, within=300)
            took = time.monotonic() - started
            await w.stop_daemon()
        events = await all_events(w)
        print(
            f"{flood} messages for one capped peer in {took:.1f}s; log lines: "
            f"{len(lines.records)}; stream entries: {len(events)}"
        )
        for record in lines.records:
            print("  ", record.getMessage())
        counters = await w.store.events.counters()
        assert (counters["stored"], counters["evicted"]) == (3 + flood, 3 + flood - CAP)
        assert all(e in events for e in real), "the stored entries of really kept mail stay"
        # The first CAP stores had room: told one by one, and so is their eviction. The
        # flood's stores from the first eviction on, and their evictions, are summed, but
        # for its first store in each interval (of Redis's clock), told to wake bob up.
        intervals = math.ceil(took / DEFAULT_SUMMARY_INTERVAL) + 1
        told_stored = [e.message_id for e in events if e.kind == "stored"]
        told_evicted = [e.message_id for e in events if e.kind == "evicted"]
        wake_ups = len(told_stored) - CAP
        assert 1 <= wake_ups <= intervals, wake_ups
        assert told_evicted == told_stored[:CAP], "each told message's eviction is told, in order"
        assert summed(events, "stored", "flooded") == 3 + flood - CAP - wake_ups
        assert summed(events, "evicted", "peer_cap") == 3 + flood - 2 * CAP
        summaries = [e for e in events if e.kind == "summary"]
        assert len(events) - len(summaries) == 2 * CAP + wake_ups
        # two kinds (stored, evicted), for each interval the flood lasted into
        assert len(summaries) <= 2 * intervals
        assert [m.id for m in await w.stored_for(w.bob)] != [], "the newest are kept"
        assert len(lines.records) <= LOG_LINES_BOUND


@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: p.name)
async def test_a_capped_peers_flood_keeps_the_entries_of_kept_mail(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    await capped_peer_flood(personality, redis_url, tmp_path, FLOOD)


@pytest.mark.long
@pytest.mark.parametrize("personality", GENERATIONS, ids=lambda p: p.name)
async def test_a_full_capped_peers_flood_keeps_the_entries_of_kept_mail(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    await capped_peer_flood(personality, redis_url, tmp_path, FULL_FLOOD)


# The parts, against a real Redis.

NODE = bytes.fromhex("02" + "44" * 32)
NOW = 1_700_000_000.0


def key() -> bytes:
    return PrivateKey().public_key.format()


async def test_a_flood_mark_lasts_until_the_queue_is_empty(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=2))
    bob, sender = key(), key()
    first = [await put_one(store, bob, sender, key(), os.urandom(1366), NOW) for _ in range(4)]
    # the put that evicts floods; the flood's first store this interval is told all the same
    assert await redis_client.hget(store.keys.usage_key, f"flood:{bob.hex()}") is not None
    assert [r.flooded for r in first] == [False, False, False, True]
    more = await put_one(store, bob, sender, key(), os.urandom(1366), NOW)
    assert more.flooded
    assert more.status is PutStatus.STORED
    assert await store.queues.purge(bob) == 2
    again = await put_one(store, bob, sender, key(), os.urandom(1366), NOW)
    assert not again.flooded, "an empty queue ends the flood"
    told = [(e.kind, e.message_id) for e in await store.events.read()]
    assert told == [
        ("stored", first[0].message_id),
        ("stored", first[1].message_id),
        ("evicted", first[0].message_id),
        ("stored", first[2].message_id),  # the wake-up
        ("evicted", first[1].message_id),  # by first[3]: both told before the flood
        ("stored", again.message_id),
    ]
    assert await store.events.record(close=True) == 2
    by = {(x.of, x.reason): (x.count, x.top) for x in await store.events.recent(2)}
    # first[3] and more; more evicted the wake-up (stored during the flood: summed)
    assert by == {
        ("stored", "flooded"): (2, ((bob, 2),)),
        ("evicted", "peer_cap"): (1, ((bob, 1),)),
    }


async def test_a_delivery_counts_down_the_told_messages(redis_client: aioredis.Redis) -> None:
    """Removing one of the messages told before the flood (delivered and confirmed) leaves
    one fewer to tell."""
    store = Store(redis_client, NODE, Limits(max_messages_per_peer=2))
    bob, sender = key(), key()
    a, b, c = [await put_one(store, bob, sender, key(), os.urandom(1366), NOW) for _ in range(3)]
    # c evicted a (told); b is the one told message left. c, the flood's first store this
    # interval, is told (a wake-up), but it was stored during the flood: not counted in the mark
    assert not c.flooded
    ready, _ = await store.queues.peek(bob, NOW, limit=1)
    assert [m.id for m in ready] == [b.message_id]
    assert await store.queues.move_delivered(ready, 1) == 1
    assert await store.queues.confirm(bob, [(b.message_id, 1)]) == ready
    d = await put_one(store, bob, sender, key(), os.urandom(1366), NOW)
    e = await put_one(store, bob, sender, key(), os.urandom(1366), NOW)  # evicts c
    assert d.evicted == ()
    assert (d.flooded, e.flooded) == (True, True), "one wake-up an interval"
    assert e.evicted == (c.message_id,)
    kinds = [(x.kind, x.message_id) for x in await store.events.read()]
    assert kinds == [
        ("stored", a.message_id),
        ("stored", b.message_id),
        ("evicted", a.message_id),
        ("stored", c.message_id),
        ("delivered", b.message_id),
        ("confirmed", b.message_id),
    ], "c's eviction is summed: c was stored during the flood"


async def test_entries_older_than_the_ttl_are_trimmed(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, Limits(ttl=0.3))
    old = [("expired", key(), f"{i:020x}", 1399, "ttl") for i in range(150)]
    await store.events.record(events=old)
    await asyncio.sleep(0.4)  # their age passes the TTL (by Redis's clock, as the ids)
    await store.events.record(events=[("expired", key(), "aa" * 10, 1399, "ttl")])
    ids = [e.message_id for e in await store.events.read(count=1000)]
    # MINID ~ trims whole stream nodes (100 entries): at least the first full one has gone
    assert ids[-1] == "aa" * 10
    assert len(ids) <= 51
    assert not set(ids) & {f"{i:020x}" for i in range(100)}


async def test_the_backstop_holds_the_stream_near_its_bound(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE, events_maxlen=200)
    for i in range(10):
        batch = [("expired", key(), f"{i:04x}{j:016x}", 1399, "ttl") for j in range(100)]
        await store.events.record(events=batch)
    length = await redis_client.xlen(store.keys.events_key)
    assert 200 <= length <= 300, length  # MAXLEN ~ trims whole nodes of 100 entries


def test_the_bound_with_the_default_caps() -> None:
    # 5 x 191,876 standard messages under 256 MiB; 64 wake-ups of flooded peers a minute,
    # each with its removal, over the 1,441 minutes a day touches; 64 summaries a minute
    assert stream_bound(Limits()) == 5 * 191_876 + 2 * 64 * 1441 + 64 * 1440 == 1_235_988


async def test_the_reporter_sums_drops_and_losses(
    redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(redis_client, NODE)
    reporter = Reporter(node=NODE, metrics=Metrics(), events=store.events)
    mallory, eve, bob = key(), key(), key()
    caplog.set_level(logging.INFO, logger="lndmailbox")
    for i in range(3000):
        reporter.dropped("not_allowed", sender=mallory if i % 3 else eve, peer=key())
    for _ in range(5):
        reporter.lost(bob, 1399, "buffer_full")
    stop = asyncio.Event()
    stop.set()
    await reporter.run(stop)  # the stop ends the interval
    counters = await store.events.counters()
    assert (counters["dropped:not_allowed"], counters["lost"]) == (3000, 5)
    by = {(e.of, e.reason): e for e in await store.events.read()}
    assert set(by) == {("dropped", "not_allowed"), ("lost", "buffer_full")}
    drops = by[("dropped", "not_allowed")]
    assert (drops.count, drops.peers, drops.top) == (3000, 2, ((mallory, 2000), (eve, 1000)))
    assert by[("lost", "buffer_full")].top == ((bob, 5),)
    lines = [(r.levelname, r.getMessage().split()[0]) for r in caplog.records]
    assert lines == [
        ("INFO", "event=dropped"),
        ("ERROR", "event=lost"),
        ("INFO", "event=summary"),
        ("ERROR", "event=summary"),
    ]
    line = event_line(drops, as_json=False)
    assert (
        f"summary    of=dropped  reason=not_allowed  count=3000  peers=2  top={mallory.hex()}:2000,"
        in line
    )
    assert event_json(drops)["top"][0] == {"peer": mallory.hex(), "count": 2000}
