"""The daemon rides out Redis outages and memory pressure longer than its lock's lease.

The real daemon runs as a subprocess (its exit code matters) against simnet and a real
Redis server process that the test stops and starts again, or fills up to its maxmemory.
While Redis is away, messages stream in for bob, an allowed peer who is offline. What
must hold after each fault:

- the daemon is still up, and still holds the node's lock (taken again if its lease ran
  out while Redis was away: nobody else held it);
- the first ``--buffer-messages`` messages sent during the fault are stored, then
  delivered: bob peels each with his own key and finds its payload;
- every message past the buffer is counted as lost (``buffer_full``), exactly:
  sent = stored + lost, in Redis's counters and in the metrics, and the journal keeps
  nothing of the lost ones (they cannot come back from a later daemon);
- the losses take one log line when the buffer fills and one when it has room again.

SIGTERM then stops it with exit 0; another daemon taking its lock makes it step down and
stand by (it does not exit).

The CI form runs three daemons side by side (each with its own Redis and simnet node):
Redis stopped for 30 s under lnd 0.20 and under lnd 0.21, and memory full for 30 s under
lnd 0.21, about a minute of wall time. The full form (``make test-long``): one daemon per
generation through Redis stopped for 30 s, then for 60 s, then memory full for 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc
from prometheus_client.parser import text_string_to_metric_families
from simnet import Personality, SimNode, SimPeer

from lndmailbox.daemon.node_lock import LOCK_LEASE, NodeLock
from lndmailbox.daemon.owner_token import OwnerToken
from lndmailbox.daemon.supervisor import background
from lndmailbox.errors import MailboxError, NodeLockLostError
from lndmailbox.onion import BlindedHopSpec, Receive, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.store import RedisServer, Store, free_port
from lndmailbox.store.audit import audit
from tests.daemon_harness import GENERATIONS, PAYLOAD_TYPE, wait_until
from tests.daemon_process import daemon_argv

BUFFER = 20
"""``--buffer-messages``: small, so that every fault overflows it."""
PAST_THE_BUFFER = 12
"""Messages sent during a fault beyond what the buffer holds: each must be counted lost."""
BEFORE = 2
"""Messages stored with Redis up before each fault."""
FILLER_CHUNK = 256 * 1024
NODE = bytes.fromhex("02" + "11" * 32)


@dataclass(frozen=True)
class Fault:
    kind: Literal["down", "maxmemory"]
    seconds: float

    def __str__(self) -> str:
        return f"{'Redis stopped' if self.kind == 'down' else 'memory full'} {self.seconds:.0f}s"


@dataclass
class Figures:
    """What one daemon went through, for the closing print and the asserts."""

    sent: int = 0
    stored: int = 0
    lost: int = 0
    faults: list[str] = field(default_factory=list)


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def lines(self) -> list[dict[str, object]]:
        """The daemon's JSON log lines so far."""
        out = []
        for raw in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out

    def messages(self) -> list[str]:
        return [str(line.get("msg", "")) for line in self.lines()]

    async def metric(self, name: str, **labels: str) -> float:
        text = await asyncio.to_thread(_scrape, self.metrics_port)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        raise AssertionError(f"no sample {name}{labels}")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


class Rig:
    """simnet's node with alice (sender) and bob (allowed, offline), its own Redis server
    process, the daemon as a subprocess, and the messages sent so far."""

    def __init__(self, personality: Personality, tmp_path: Path) -> None:
        self.personality = personality
        self.tmp_path = tmp_path
        self.redis = RedisServer(tmp_path / "redis", persist=True)
        self.node = SimNode(personality, onion_rate_limits=None)
        self.alice: SimPeer
        self.bob: SimPeer
        self.store: Store
        self.daemon: Daemon
        self.kept: list[bytes] = []
        """Payloads that must reach bob, in the order they were sent."""
        self.figures = Figures()
        self._count = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Rig]:
        await asyncio.to_thread(self.redis.start)
        await self.node.start()
        self.alice = self.node.add_peer("alice")
        self.bob = self.node.add_peer("bob")
        self.node.open_channel(self.alice, scid(800_000, 1, 0))
        self.node.open_channel(self.bob, scid(800_000, 2, 0))
        self.alice.connect()
        self.store = Store.from_url(self.redis.url, self.node.pubkey)
        try:
            await self.store.allowlist.add([self.bob.pubkey])  # allowed by the list alone
            self.daemon = self._start_daemon()
            try:
                await self._wait_until_serving()
                yield self
            finally:
                if self.daemon.process.poll() is None:
                    self.daemon.process.kill()
                self.daemon.process.wait()
        finally:
            await self.store.aclose()
            await self.node.stop()
            await asyncio.to_thread(self.redis.stop)

    def _start_daemon(self) -> Daemon:
        cert, macaroon = self.node.write_credentials(self.tmp_path / "lnd")
        port = free_port()
        log_path = self.tmp_path / "daemon.log"
        command = daemon_argv(
            self.node.target,
            cert,
            macaroon,
            self.redis.url,
            "--buffer-messages",
            str(BUFFER),
            # bob leaves soon after collecting: what he got must be confirmed by then
            "--confirm-after",
            "200ms",
            "--metrics-addr",
            f"127.0.0.1:{port}",
            "--log-format",
            "json",
        )
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=log)
        return Daemon(process, log_path, port)

    async def _wait_until_serving(self) -> None:
        stream = "onion_messages" if self.personality is Personality.LND_0_21 else "custom_messages"

        async def serving() -> bool:
            assert self.daemon.process.poll() is None, self.daemon.messages()
            return (
                self.node.subscriber_count(stream) >= 1
                and self.node.subscriber_count("peer_events") >= 1
                and await self.holds_lock()
            )

        await wait_until(serving, within=30, what="the daemon to serve the node")

    async def holds_lock(self) -> bool:
        owner = await self.store.control.lock_owner()
        token = OwnerToken.parse(owner) if owner is not None else None
        return token is not None and (token.host, token.pid) == (
            socket.gethostname(),
            self.daemon.process.pid,
        )

    async def send(self) -> bytes:
        text = f"{self.personality.value} message {self._count}".encode()
        self._count += 1
        _, message = message_via(
            [BlindedHopSpec(self.node.pubkey, next_node_id=self.bob.pubkey), self.bob.pubkey],
            {PAYLOAD_TYPE: text},
        )
        fate = await self.alice.send_onion_message(message)
        assert fate.published, fate  # handed to the daemon's stream: bob is offline
        self.figures.sent += 1
        return text

    async def counters(self) -> dict[str, int]:
        return await self.store.events.counters()

    async def received(self) -> float:
        return await self.daemon.metric("lndmailbox_received_total")

    async def lost(self) -> float:
        return await self.daemon.metric("lndmailbox_lost_total", reason="buffer_full")


async def ride_out(rig: Rig, fault: Fault) -> None:
    """Stores a few messages, then streams messages for offline bob through ``fault``;
    checks the accounting, then lets bob collect and peel what was kept."""
    before = await rig.counters()
    await _store_a_few(rig, before)
    away = await _stream_through(rig, fault)

    async def accounted() -> bool:
        now = await rig.counters()
        return (
            now.get("stored", 0) - before.get("stored", 0) == BEFORE + BUFFER
            and now.get("lost", 0) - before.get("lost", 0) == PAST_THE_BUFFER
        )

    try:
        await wait_until(accounted, within=60, what="the buffer written and the losses counted")
    except AssertionError as e:
        now = await rig.counters()
        raise AssertionError(f"{rig.personality.value} {fault}: {before} -> {now}") from e
    assert rig.daemon.process.poll() is None, "the daemon stopped"
    await wait_until(rig.holds_lock, within=2 * LOCK_LEASE, what="the lock held again")

    async def journal_empty() -> bool:
        return await rig.store.journal.pending() == []

    # Each stored message's entry is forgotten, and so is each lost one's: none comes back.
    await wait_until(journal_empty, what="the journal to forget every message of the fault")
    await _bob_collects(rig)
    rig.figures.stored += BEFORE + BUFFER
    rig.figures.lost += PAST_THE_BUFFER
    rig.figures.faults.append(f"{fault} (away {away:.1f}s)")


async def _store_a_few(rig: Rig, before: dict[str, int]) -> None:
    for _ in range(BEFORE):
        rig.kept.append(await rig.send())

    async def stored() -> bool:
        return (await rig.counters()).get("stored", 0) == before.get("stored", 0) + BEFORE

    await wait_until(stored, what="the messages sent before the fault to be stored")


async def _stream_through(rig: Rig, fault: Fault) -> float:
    """Sends ``BUFFER + PAST_THE_BUFFER`` messages during ``fault``; returns how long Redis
    was away. The first ``BUFFER`` of them must reach bob."""
    lost_before = await rig.lost()
    started = time.monotonic()
    filler = await _begin(rig, fault)
    during = BUFFER + PAST_THE_BUFFER
    spacing = fault.seconds * 0.7 / during
    texts = []
    for _ in range(during):
        texts.append(await rig.send())
        await asyncio.sleep(spacing)

    async def all_decided() -> bool:
        return await rig.received() == rig.figures.sent and (
            await rig.lost() == lost_before + PAST_THE_BUFFER
        )

    # Every message read, and exactly those past the buffer lost, while Redis is still away.
    await wait_until(all_decided, within=fault.seconds, what="the daemon to decide them all")
    await asyncio.sleep(max(started + fault.seconds - time.monotonic(), 0))
    await _end(rig, filler)
    away = time.monotonic() - started
    assert away >= fault.seconds
    rig.kept.extend(texts[:BUFFER])
    return away


async def _bob_collects(rig: Rig) -> None:
    """bob comes online, gets every message kept so far (each peeled with his own key to
    its payload), and goes offline again."""
    rig.bob.connect()
    await wait_until(
        lambda: len(rig.bob.received) == len(rig.kept), within=60, what="bob to get his mail"
    )
    payloads = []
    for message in rig.bob.received:
        peeled = await rig.bob.peel(message)
        assert isinstance(peeled, Receive)
        payloads.append(peeled.payload[PAYLOAD_TYPE])
    assert sorted(payloads) == sorted(rig.kept), "not the messages within the buffer"

    async def left_redis() -> bool:  # removed once confirmed, --confirm-after later
        return await rig.store.queues.held(rig.bob.pubkey) == []

    await wait_until(left_redis, what="the delivered messages to be confirmed")
    rig.bob.disconnect()

    async def bob_offline() -> bool:
        return await rig.daemon.metric("lndmailbox_online_peers") == 1

    await wait_until(bob_offline, what="the daemon to see bob go offline")


async def _begin(rig: Rig, fault: Fault) -> aioredis.Redis | None:
    if fault.kind == "down":
        await asyncio.to_thread(rig.redis.stop)
        return None
    # Fill Redis up to a small maxmemory, with noeviction: every write is refused (OOM).
    filler = aioredis.Redis.from_url(rig.redis.url)
    used = (await filler.info("memory"))["used_memory"]
    await filler.config_set("maxmemory-policy", "noeviction")
    await filler.config_set("maxmemory", used + 4 * 1024 * 1024)
    # Big pieces first, then small ones: a big command's own input buffer counts while it
    # is checked, and is freed after, which would leave room for small writes.
    offset = 0
    for chunk in (FILLER_CHUNK, 1024):
        with contextlib.suppress(rexc.OutOfMemoryError):
            while True:
                await filler.setrange("test:filler", offset, b"x" * chunk)
                offset += chunk
    # Then the limit a little below what is used, so that Redis's own wobble (buffers
    # freed, a key expiring) cannot let a write through mid-fault.
    used = (await filler.info("memory"))["used_memory"]
    await filler.config_set("maxmemory", used - 1024 * 1024)
    with pytest.raises(rexc.OutOfMemoryError):
        await filler.set("test:probe", b"x" * 1024)
    return filler


async def _end(rig: Rig, filler: aioredis.Redis | None) -> None:
    if filler is None:
        await asyncio.to_thread(rig.redis.start)
        return
    await filler.delete("test:filler")
    await filler.aclose()


async def daemon_rides_out(personality: Personality, faults: list[Fault], tmp_path: Path) -> None:
    async with Rig(personality, tmp_path).running() as rig:
        for fault in faults:
            await ride_out(rig, fault)
        counters = await rig.counters()
        assert rig.figures.sent == counters["stored"] + counters["lost"]
        assert counters["stored"] == rig.figures.stored == counters.get("delivered", 0)
        assert await rig.daemon.metric("lndmailbox_stored_total") == rig.figures.stored
        assert await rig.lost() == counters["lost"] == rig.figures.lost
        assert await audit(rig.store) == []
        assert await rig.holds_lock()

        rig.daemon.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(rig.daemon.process.wait, 30)
        messages = rig.daemon.messages()
        assert code == 0, messages[-20:]

    assert not [m for m in messages if "lost the node lock" in m]
    outages = sum(f.kind == "down" and f.seconds > LOCK_LEASE for f in faults)
    # The lease runs out only while Redis is stopped: under memory pressure it is renewed.
    assert sum("took it again" in m for m in messages) == outages
    assert sum("buffer is full" in m for m in messages) == len(faults)
    room_again = f"{PAST_THE_BUFFER} messages were lost while it was full"
    assert sum(room_again in m for m in messages) == len(faults)
    # Summarized, never one line per lost message: a first one, then a count per interval.
    lost_lines = [
        line
        for line in rig.daemon.lines()
        if line.get("event") == "lost"
        or (line.get("event") == "summary" and line.get("of") == "lost")
    ]
    assert len(lost_lines) <= 2 * len(faults) < rig.figures.lost
    print(
        f"\n{personality.release}: {', '.join(rig.figures.faults)}; sent {rig.figures.sent}, "
        f"stored and delivered {rig.figures.stored}, lost {rig.figures.lost} "
        f"(--buffer-messages {BUFFER}); {len(messages)} log lines, {len(lost_lines)} of them "
        f"about the losses"
    )


async def test_redis_outages_and_memory_pressure_past_the_lease(tmp_path: Path) -> None:
    """CI form: three daemons side by side, each through one 30 s fault."""
    async with asyncio.TaskGroup() as group:
        for name, personality, fault in (
            ("down20", Personality.LND_0_20, Fault("down", 30)),
            ("down21", Personality.LND_0_21, Fault("down", 30)),
            ("memory21", Personality.LND_0_21, Fault("maxmemory", 30)),
        ):
            (tmp_path / name).mkdir()
            group.create_task(daemon_rides_out(personality, [fault], tmp_path / name))


@pytest.mark.long
@GENERATIONS
async def test_one_daemon_rides_out_30s_and_60s_outages_and_memory_pressure(
    personality: Personality, tmp_path: Path
) -> None:
    """The full form: one daemon through every fault the issue names, in a row."""
    faults = [Fault("down", 30), Fault("down", 60), Fault("maxmemory", 30)]
    await daemon_rides_out(personality, faults, tmp_path)


async def test_another_daemon_taking_the_lock_makes_this_one_step_down(tmp_path: Path) -> None:
    """Two daemons must never lead one node: the holder that finds its lock taken steps
    down (it does not exit), says so once, leaves the other's lock alone, and stands by
    until the lock is free again."""
    rig = Rig(Personality.LND_0_21, tmp_path)
    async with rig.running():
        other = "elsewhere:1:0ther000"
        await rig.store.redis.set(rig.store.keys.lock_key, other, px=60_000)

        def stepped_down() -> bool:
            return any("stepping down" in m for m in rig.daemon.messages())

        await wait_until(stepped_down, what="the daemon to step down")
        assert rig.daemon.process.poll() is None, "a leader that lost its lock stands by"
        assert await rig.store.control.lock_owner() == other
        await rig.store.redis.delete(rig.store.keys.lock_key)  # the other one stopped
        await wait_until(rig.holds_lock, what="the lock taken again")
        rig.daemon.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(rig.daemon.process.wait, 30)
    messages = rig.daemon.messages()
    assert code == 0, messages[-20:]
    reason = [m for m in messages if "lost the node lock" in m]
    assert reason == [
        f"stepping down: lost the node lock to another daemon ({other}); standing by "
        "(what this daemon read is decided)"
    ]


# The lock's rules in process, with a short lease (injectable) to keep them quick.


async def test_the_holder_takes_its_lock_again_after_an_outage_longer_than_the_lease(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lndmailbox.daemon.node_lock")
    redis = RedisServer(tmp_path / "redis", persist=True)
    await asyncio.to_thread(redis.start)
    store = Store.from_url(redis.url, NODE)
    lock = NodeLock(store.control, lease=0.5, heartbeat_interval=0.1)
    stop = asyncio.Event()
    try:
        async with lock.held(stop):
            assert await store.control.lock_owner() == lock.owner
            await asyncio.to_thread(redis.stop)
            await asyncio.sleep(1.5)  # three leases: the key has expired when Redis is back
            await asyncio.to_thread(redis.start)

            async def retaken() -> bool:
                return "took it again" in caplog.text

            await wait_until(retaken, what="the lock to be taken again")
            assert await store.control.lock_owner() == lock.owner
            assert not stop.is_set()
        assert await store.control.lock_owner() is None, "released at the end"
    finally:
        await store.aclose()
        await asyncio.to_thread(redis.stop)


async def test_a_holder_that_finds_another_owner_stops_and_raises(
    server_or_cluster_url: str,
) -> None:
    store = Store.from_url(server_or_cluster_url, NODE)
    lock = NodeLock(store.control, lease=0.5, heartbeat_interval=0.1)
    stop = asyncio.Event()

    async def hold_until_taken() -> None:
        async with lock.held(stop):
            await store.redis.set(store.keys.lock_key, "elsewhere:1:x", px=10_000)
            await asyncio.wait_for(stop.wait(), 5)

    try:
        with pytest.raises(NodeLockLostError, match=r"another daemon \(elsewhere:1:x\)"):
            await hold_until_taken()
        assert await store.control.lock_owner() == "elsewhere:1:x", "the other's lock is kept"
    finally:
        await store.aclose()


async def test_a_background_task_that_dies_stops_the_daemon_with_its_error() -> None:
    async def dies() -> None:
        raise RuntimeError("the lease task broke")

    stop = asyncio.Event()
    with pytest.raises(MailboxError, match="the lease task broke"), background(dies(), stop):
        await asyncio.wait_for(stop.wait(), 5)
