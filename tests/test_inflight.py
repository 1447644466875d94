"""The in-flight cap (``--max-in-flight-bytes``): what the daemon holds between lnd's stream
and a decision, in its memory and in Redis's journal, stays under it.

- A burst of large messages (65 KB garbage with fresh keys on lnd 0.20, which hands them
  over unpeeled; 65 KB valid ones for a peer nobody keeps mail for on 0.21, which peels
  them first) over a small cap: every message is accounted for exactly once, turned away
  (``in_flight_full``) or decided, in the metrics, the Redis counters and the log's
  summary lines; the code's own accounting never passed the cap, and neither did the
  journal's hash in Redis (its entries and ``MEMORY USAGE``, read together through the
  burst, also while a write journals some and deletes others).
- The journal writer: a batch Redis did not take is written with the next one; one it
  never could (Redis away at shutdown, or hung and the last write cancelled) is counted
  as lost; an entry whose write Redis applied but whose reply was lost is deleted once
  decided; no write sends Redis more than ``_WRITE_BYTES`` of messages (Redis's own
  record of its largest client input buffer); and over maxmemory, where Redis refuses
  the write, decisions still take their entries out of the journal (printed: the memory
  they free).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import coincurve
import pytest
from simnet import Personality, SimNode

from lndmailbox.clock import SystemClock
from lndmailbox.config import Settings
from lndmailbox.daemon import run
from lndmailbox.daemon.journal_writer import _WRITE_BYTES, JournalWriter
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.errors import StoreUnavailableError
from lndmailbox.lnd import IncomingOnionMessage
from lndmailbox.onion import BlindedHopSpec, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import Journal, NewEntry, RedisServer, Store, free_port
from lndmailbox.store.journal import entry_for
from tests.daemon_harness import PAYLOAD_TYPE, wait_until

CAP = 256 * 1024
"""Room for four 65 KB messages: a burst of them goes over it at once."""
ONION = 65_000
SIZE = 33 + ONION
"""What the cap counts of one message: path key and onion."""
BURST = 200
JOURNALED = CAP // SIZE
"""The most messages the cap lets the journal hold at once: 4."""
READY = "ready: following lnd's peer events and onion messages"


def point() -> bytes:
    return coincurve.PrivateKey(os.urandom(32)).public_key.format(compressed=True)


def garbage() -> OnionMessage:
    """65 KB that lnd 0.20 hands over as it is; the decider needs two ECDHs (fresh keys,
    nothing cached) to find the HMAC wrong."""
    return OnionMessage(point(), b"\x00" + point() + os.urandom(ONION - 33 - 1))


def for_a_stranger(node: bytes) -> OnionMessage:
    """A valid 65 KB message through the LSP to a node nobody keeps mail for."""
    stranger = point()
    _, message = message_via(
        [BlindedHopSpec(node, next_node_id=stranger), stranger],
        {PAYLOAD_TYPE: b"big"},
        packet_size=ONION,
    )
    return message


def scrape(port: int) -> dict[str, float]:
    """The daemon's ``dropped_total`` samples by reason (those above 0)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'lndmailbox_dropped_total\{reason="(\w+)"\} (\S+)', line)
        if match and float(match.group(2)):
            values[match.group(1)] = float(match.group(2))
    return values


async def _dropped(store: Store, metrics: dict[str, float]) -> bool:
    counters = await store.events.counters()
    return all(counters.get(f"dropped:{reason}", 0) == n for reason, n in metrics.items())


async def _emptied(store: Store) -> bool:
    return not await store.journal.redis.exists(store.journal.keys.journal_key)


def _episodes_closed(log: str) -> bool:
    """Each WARNING that the cap turns messages away has its count line."""
    return log.count("in-flight messages at the cap") == log.count("fit under the cap again")


async def sample_inbox(store: Store, peak: list[int], done: asyncio.Event) -> None:
    """Keeps the largest ``MEMORY USAGE`` of the journal's hash (``peak[0]``) and the most
    entries it held (``peak[1]``) seen until ``done``, both read at one instant."""
    key = store.journal.keys.journal_key
    while not done.is_set():
        async with store.journal.redis.pipeline(transaction=True) as pipe:
            pipe.memory_usage(key, samples=0)
            pipe.hlen(key)
            usage, entries = await pipe.execute()
        peak[0] = max(peak[0], int(usage or 0))
        peak[1] = max(peak[1], int(entries))
        await asyncio.sleep(0.002)


async def usage_of(store: Store, entries: int) -> int:
    """``MEMORY USAGE`` of a hash of ``entries`` journal entries of the burst's messages:
    what the cap counts of each, and what it does not (the entry's name, received_at and
    sender, Redis's structure and its allocator's rounding), on this server."""
    key, redis = "reference", store.journal.redis
    await redis.hset(
        key, mapping={os.urandom(8).hex(): os.urandom(8 + 33 + SIZE) for _ in range(entries)}
    )
    try:
        return int(await redis.memory_usage(key, samples=0) or 0)
    finally:
        await redis.delete(key)


@contextlib.asynccontextmanager
async def lsp(personality: Personality) -> AsyncIterator[SimNode]:
    node = SimNode(personality, onion_rate_limits=None)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.mark.parametrize(
    "personality", [Personality.LND_0_20, Personality.LND_0_21], ids=["lnd0.20", "lnd0.21"]
)
async def test_a_burst_over_the_cap_is_turned_away_and_counted_exactly(
    personality: Personality, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lndmailbox")
    decided_as = "bad_hmac" if personality is Personality.LND_0_20 else "not_allowed"
    async with lsp(personality) as node, Store.from_url(redis_url, node.pubkey) as store:
        alice = node.add_peer("alice")
        node.open_channel(alice, scid(800_000, 1, 0))
        alice.connect()
        cert, macaroon = node.write_credentials(tmp_path / "lnd")
        port = free_port()
        settings = Settings(
            rpcserver=node.target,
            tlscertpath=cert,
            macaroonpath=macaroon,
            network="regtest",
            redis_url=redis_url,
            datadir=tmp_path / "mailbox",
            allow_channel_peers=True,
            max_in_flight_bytes=CAP,
            metrics_addr=f"127.0.0.1:{port}",
        )
        build = garbage if personality is Personality.LND_0_20 else None
        burst = [build() if build else for_a_stranger(node.pubkey) for _ in range(BURST)]
        stop = asyncio.Event()
        daemon = asyncio.create_task(run(settings, stop=stop))
        try:
            await wait_until(lambda: READY in caplog.text, within=30, what="the daemon")
            # A daemon keeps the stream it stood by on for a grace after it leads; what that
            # one journals the leader adopts later, past this test's exact count.
            stream = "custom_messages" if personality is Personality.LND_0_20 else "onion_messages"
            await wait_until(
                lambda: node.subscriber_count(stream) == 1, what="the standby's stream to close"
            )
            done, peak = asyncio.Event(), [0, 0]
            sampler = asyncio.create_task(sample_inbox(store, peak, done))
            started = time.monotonic()
            for message in burst:
                await alice.send_onion_message(message)
            await wait_until(
                lambda: sum(scrape(port).values()) == BURST, within=60, what="every outcome"
            )
            took = time.monotonic() - started
            done.set()
            await sampler
            # The daemon frees a decided message's room once the write deleting it from
            # the journal is done: one more, after that, fits with the cap free, which
            # closes the last episode's count.
            await wait_until(lambda: _emptied(store), what="the journal to be emptied")
            await alice.send_onion_message(burst[0] if build is None else garbage())
            await wait_until(lambda: _episodes_closed(caplog.text), what="room")
            await wait_until(lambda: sum(scrape(port).values()) == BURST + 1, what="the last")
            metrics = scrape(port)
            await wait_until(
                lambda: _dropped(store, metrics), what="the counters in Redis to agree"
            )
            counters = await store.events.counters()
            one_too_many = await usage_of(store, JOURNALED + 1)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 30)

    turned_away = int(metrics.get("in_flight_full", 0))
    print(
        f"\n{personality.release}: {BURST} x {SIZE} bytes in {took:.1f}s over a cap of {CAP}: "
        f"{turned_away} turned away, {int(metrics.get(decided_as, 0))} decided; "
        f"journal in Redis at most {peak[1]} messages, {peak[0]} bytes (MEMORY USAGE; "
        f"{JOURNALED + 1} would take {one_too_many})"
    )
    assert turned_away > 0, "the burst never went over the cap: this tests nothing"
    # Exactly once each: turned away or decided, nothing else, nothing twice; the same in
    # the metrics and in the counters mailboxctl shows.
    assert metrics == {"in_flight_full": turned_away, decided_as: BURST + 1 - turned_away}
    assert {k: v for k, v in counters.items() if k.startswith("dropped:")} == {
        f"dropped:{reason}": count for reason, count in metrics.items()
    }
    # The log: one WARNING when the cap starts turning messages away, one with the count
    # when a message fits again; the counts add up.
    starts = caplog.text.count("in-flight messages at the cap")
    counts = [
        int(n) for n in re.findall(r"fit under the cap again; (\d+) were turned", caplog.text)
    ]
    assert starts == len(counts) >= 1
    assert sum(counts) == turned_away
    # The code's accounting never passed the cap, nor did the journal in Redis.
    line = re.search(r"(\d+) bytes journaled, (\d+) bytes in the decision queue", caplog.text)
    assert line is not None
    journaled, queued = int(line.group(1)), int(line.group(2))
    assert SIZE <= journaled <= CAP
    assert SIZE <= queued <= CAP
    # Redis's hash holds whole messages only, so the cap bounds it exactly in entries; in
    # memory, whatever Redis adds to each entry beyond the cap's count, it stays short of
    # what one message more than the cap admits takes.
    assert 0 < peak[1] <= JOURNALED
    assert 0 < peak[0] < one_too_many


# --- the journal writer --------------------------------------------------------------------


def incoming(n: int) -> IncomingOnionMessage:
    return IncomingOnionMessage(point(), point(), bytes([n % 256]) * ONION)


@contextlib.asynccontextmanager
async def journal_on_own_redis(
    tmp_path: Path, metrics: Metrics
) -> AsyncIterator[tuple[RedisServer, Store, JournalWriter]]:
    redis = RedisServer(tmp_path / "redis", persist=True)
    redis.start()
    node = point()
    try:
        async with Store.from_url(redis.url, node) as store:
            reporter = Reporter(node=node, metrics=metrics, events=store.events)
            yield redis, store, JournalWriter(store.journal, SystemClock(), reporter, metrics)
    finally:
        redis.stop()


async def test_a_journal_write_sends_redis_at_most_its_share(tmp_path: Path) -> None:
    async with journal_on_own_redis(tmp_path, Metrics()) as (_, store, writer):
        entries = [writer.add(incoming(n), time.time()) for n in range(80)]
        assert writer.bytes == 80 * SIZE  # 5 MiB, in one flush
        await writer.flush()
        memory = await store.journal.redis.info("memory")  # before reading it all back
        assert {e.entry for e in await store.journal.pending()} == set(entries)
    # What Redis held beyond the journal itself while taking the writes: one write's
    # arguments, and (appendonly, as the embedded server runs) their copy in the AOF
    # buffer; not the whole flush (one write of it all measured 2 x 5 MiB beyond).
    beyond = int(memory["used_memory_peak"]) - int(memory["used_memory"])
    print(f"\n{80 * SIZE} bytes journaled; Redis's peak beyond them: {beyond} bytes")
    assert beyond <= 2 * (_WRITE_BYTES + SIZE)


async def test_a_batch_redis_missed_goes_with_the_next(tmp_path: Path) -> None:
    async with journal_on_own_redis(tmp_path, Metrics()) as (redis, store, writer):
        redis.stop()
        missed = [writer.add(incoming(n), time.time()) for n in range(3)]
        with pytest.raises(StoreUnavailableError):
            await writer.flush()
        redis.start()
        await writer.flush()
        assert {e.entry for e in await store.journal.pending()} == set(missed)
        assert writer.bytes == 3 * SIZE


async def test_what_was_never_journaled_at_shutdown_is_counted_lost(tmp_path: Path) -> None:
    metrics = Metrics()
    async with journal_on_own_redis(tmp_path, metrics) as (redis, _, writer):
        written = writer.add(incoming(0), time.time())
        await writer.flush()
        redis.stop()
        for n in range(2):
            writer.add(incoming(n), time.time())
        writer.decided(written)  # decided: to forget, not lost
        stop = asyncio.Event()
        stop.set()
        await writer.run(stop)  # its last flush, with Redis away
    lost = metrics.registry.get_sample_value("lndmailbox_lost_total", {"reason": "shutdown"})
    assert lost == 2
    assert writer.bytes == 0


async def test_a_last_write_cut_short_by_the_shutdown_is_counted_lost(tmp_path: Path) -> None:
    """Redis hangs (SIGSTOP): the shutdown cancels the journal's last write; what it held
    is counted lost, not dropped uncounted."""
    metrics = Metrics()
    async with journal_on_own_redis(tmp_path, metrics) as (redis, _, writer):
        pid = redis.pid
        assert pid is not None
        for n in range(3):
            writer.add(incoming(n), time.time())
        os.kill(pid, signal.SIGSTOP)
        try:
            stop = asyncio.Event()
            stop.set()
            task = asyncio.create_task(writer.run(stop))  # its last flush, Redis hung
            await asyncio.sleep(0.3)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            os.kill(pid, signal.SIGCONT)
    lost = metrics.registry.get_sample_value("lndmailbox_lost_total", {"reason": "shutdown"})
    assert lost == 3
    assert writer.bytes == 0


class ReplyLost(Journal):
    """Redis applies the write, and its reply is lost (a timeout): ``lose`` times."""

    def __init__(self, journal: Journal, lose: int) -> None:
        super().__init__(journal.redis, journal.keys, journal.limits)
        self.lose = lose

    async def write(self, added: Sequence[NewEntry] = (), decided: Sequence[str] = ()) -> int:
        skipped = await super().write(added, decided)
        if self.lose:
            self.lose -= 1
            raise StoreUnavailableError("Timeout reading from socket")
        return skipped


async def test_an_entry_whose_write_lost_its_reply_is_deleted_once_decided(
    tmp_path: Path,
) -> None:
    async with journal_on_own_redis(tmp_path, Metrics()) as (_, store, _writer):
        metrics = Metrics()
        reporter = Reporter(node=point(), metrics=metrics, events=store.events)
        writer = JournalWriter(ReplyLost(store.journal, lose=1), SystemClock(), reporter, metrics)
        entry = writer.add(incoming(0), time.time())
        with pytest.raises(StoreUnavailableError):
            await writer.flush()  # applied, though it looks failed
        writer.decided(entry)  # before the next write
        await writer.flush()
        assert await store.journal.pending() == [], "a decided message stays journaled"
        assert writer.bytes == 0


async def test_decisions_leave_the_journal_while_redis_is_over_maxmemory(tmp_path: Path) -> None:
    """Redis full (over maxmemory, noeviction) refuses the journal's write, and with it the
    decisions: they go out all the same, deletes only, and free what they held; what is
    not decided stays journaled, and what was read meanwhile is journaled once Redis has
    room. Nothing is recorded as decided meanwhile (that would add memory)."""
    metrics = Metrics()
    async with journal_on_own_redis(tmp_path, metrics) as (_, store, writer):
        redis = store.journal.redis
        journal_key, decided_key = store.keys.journal_key, store.keys.decided_key
        added = [writer.add(incoming(n), time.time()) for n in range(40)]
        entries = [entry for entry in added if entry is not None]
        assert len(entries) == 40
        await writer.flush()
        full = int((await redis.info("memory"))["used_memory"])
        held = await redis.memory_usage(journal_key, samples=0)
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", full - 1024 * 1024)
        try:
            late = incoming(99)
            with pytest.raises(StoreUnavailableError, match="maxmemory"):
                await store.journal.write(
                    [NewEntry(entry_for(late.path_key, late.onion), *fields_of(late))], entries[:1]
                )
            assert await redis.hlen(journal_key) == 40, "the refused write deleted nothing"

            for entry in entries[:30]:
                writer.decided(entry)
            read_meanwhile = writer.add(late, time.time())
            with pytest.raises(StoreUnavailableError, match="maxmemory"):
                await writer.flush()
            after = int((await redis.info("memory"))["used_memory"])
            held_after = await redis.memory_usage(journal_key, samples=0)
            remaining = set(await store.journal.entries())
            assert remaining == set(entries[30:]), "the decided left, the undecided stayed"
            assert await redis.zcard(decided_key) == 0, "nothing recorded as decided"
            assert read_meanwhile is not None
            assert writer.holds(read_meanwhile), "not journaled, still held"
            assert writer.bytes == 11 * SIZE, "the decided entries' bytes are free"
        finally:
            await redis.config_set("maxmemory", 0)
        print(
            f"\nover maxmemory ({full - 1024 * 1024} bytes): used {full} bytes, the journal "
            f"{held}, with 40 entries; {after} and {held_after} after deleting 30"
        )
        assert held is not None
        assert held_after is not None
        assert held - held_after > 30 * ONION
        assert metrics.registry.get_sample_value("lndmailbox_decided_over_memory_total") == 30

        await writer.flush()  # Redis has room again: what was read meanwhile is journaled
        pending = {e.entry for e in await store.journal.pending()}
        assert pending == {*entries[30:], read_meanwhile}, "nothing lost"


def fields_of(message: IncomingOnionMessage) -> tuple[bytes, bytes, bytes, float]:
    return message.peer, message.path_key, message.onion, time.time()
