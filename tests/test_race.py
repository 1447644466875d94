"""Race-safe decisions on the native transport (lnd >= 0.21 forwards to online peers itself).

lnd publishes a message whether its own forward worked or not. The daemon leaves a message
to lnd only if its next hop has been online without a break since ``--race-window`` before
the earliest moment lnd may have tried to forward it (``Arrival.not_before``, from the
stream's :class:`~lndmailbox.lnd.streams.QuietMark`); otherwise it keeps it and the
deliverer sends it at once (``rescued``, ``came_online``).

Here: the peer tracker's online-since times, the rule itself, the stream's stamps against
simnet over gRPC, and the issue's fast reconnect end to end (simnet's lnd 0.21 personality,
a real Redis): the recipient is away when lnd tries, back before the daemon decides, and
peels the message with its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from simnet import Personality, SimNode, SimPeer

from lndmailbox.daemon.decision_queue import Arrival
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.daemon.race_guard import RaceGuard
from lndmailbox.lnd import (
    IncomingLspsMessage,
    IncomingMalformed,
    IncomingOnionMessage,
    LndClient,
    Subscription,
    Transport,
)
from lndmailbox.onion import BlindedHopSpec, LocalNodeKey, Receive, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.store import Store, free_port
from lndmailbox.store.audit import audit
from tests.daemon_harness import PAYLOAD_TYPE, World, counted, counter, wait_until, world
from tests.decider_parts import Decided, Kept, decider_for

WINDOW = 2.0


class StepClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0

    def now(self) -> float:
        return 1_700_000_000.0 + self.mono

    def monotonic(self) -> float:
        return self.mono


# --- the peer tracker ----------------------------------------------------------------------


def test_online_since_is_when_the_peer_was_seen_coming() -> None:
    clock = StepClock()
    peers = PeerTracker(clock)
    bob = b"\x02" + b"b" * 32
    assert peers.online_since(bob) is None
    assert peers.mark(bob, True)
    assert peers.online_since(bob) == 1000.0
    clock.mono = 1001.0
    assert not peers.mark(bob, True)  # an event that changes nothing keeps the time
    assert peers.online_since(bob) == 1000.0
    assert peers.mark(bob, False)
    assert peers.online_since(bob) is None
    assert peers.offline_since(bob) == 1001.0
    clock.mono = 1002.0
    peers.mark(bob, True)
    assert peers.online_since(bob) == 1002.0
    assert peers.offline_since(bob) is None


def test_a_resync_makes_every_online_peer_come_anew() -> None:
    clock = StepClock()
    peers = PeerTracker(clock)
    stayed, left, came = (bytes([2]) + bytes([n]) * 32 for n in (1, 2, 3))
    assert peers.reset({stayed, left}) == (frozenset({stayed, left}), frozenset())
    assert peers.online_since(stayed) == peers.online_since(left) == 1000.0
    clock.mono = 1005.0
    assert peers.reset({stayed, came}) == (frozenset({came}), frozenset({left}))
    # It may have left and come back while the peer events were away: nobody can tell.
    assert peers.online_since(stayed) == 1005.0
    assert peers.online_since(came) == 1005.0
    assert peers.online_since(left) is None
    assert peers.offline_since(left) == 1005.0
    assert peers.online == {stayed, came}


def test_while_the_peer_events_are_broken_no_peer_counts_as_settled() -> None:
    clock = StepClock()
    peers = PeerTracker(clock)
    bob = bytes([2]) + bytes([1]) * 32
    peers.reset({bob})
    peers.lost_sight()
    assert peers.is_online(bob)  # still drained: lnd's send says whether he is there
    assert peers.online_since(bob) is None  # but nothing is left to lnd on his account
    clock.mono = 1003.0
    peers.reset({bob})
    assert peers.online_since(bob) == 1003.0


# --- the rule ----------------------------------------------------------------------------------


def test_lnd_could_forward_only_to_a_hop_online_well_before_its_try() -> None:
    race = RaceGuard(StepClock(), WINDOW)
    assert race.lnd_could_forward(online_since=100.0, not_before=102.0)
    assert race.lnd_could_forward(online_since=100.0, not_before=150.0)
    assert not race.lnd_could_forward(online_since=100.5, not_before=102.0)
    assert not race.lnd_could_forward(online_since=103.0, not_before=102.0)
    assert not race.lnd_could_forward(online_since=None, not_before=102.0)  # offline
    assert not race.lnd_could_forward(online_since=100.0, not_before=None)  # not known


class Sent:
    """The sender's part: what was sent directly."""

    def __init__(self) -> None:
        self.to: list[bytes] = []

    async def send(self, peer: bytes, path_key: bytes, onion: bytes) -> None:
        self.to.append(peer)


class Rig:
    """A native-transport decider with bob on the allowlist (carol is not), a hand-moved
    clock, and what it sent, kept and decided."""

    def __init__(self, store: Store, node: LocalNodeKey, transport: Transport) -> None:
        self.clock = StepClock()
        self.node = node
        self.store = store
        self.peers = PeerTracker(self.clock)
        self.race = RaceGuard(self.clock, WINDOW)
        self.metrics = Metrics()
        self.reporter = Reporter(node=node.pubkey, metrics=self.metrics, events=store.events)
        self.sent, self.kept, self.decided = Sent(), Kept(), Decided()
        self.decider = decider_for(
            store,
            node_id=node.pubkey,
            node_key=node,
            transport=transport,
            clock=self.clock,
            peers=self.peers,
            race=self.race,
            sender=self.sent,
            kept=self.kept,
            decided=self.decided,
            metrics=self.metrics,
            allow_channel_peers=False,
            reporter=self.reporter,
        )

    def arrival(self, to: bytes, *, not_before: float | None, replayed: bool = False) -> Arrival:
        _, message = message_via([BlindedHopSpec(self.node.pubkey, next_node_id=to), to])
        incoming = IncomingOnionMessage(
            peer=ALICE.pubkey, path_key=message.path_key, onion=message.onion
        )
        return Arrival(
            incoming,
            "entry",
            replayed=replayed,
            received_at=self.clock.now(),
            read_at=self.clock.monotonic(),
            not_before=not_before,
        )

    def rescued(self, why: str) -> float:
        value = self.metrics.registry.get_sample_value("lndmailbox_rescued_total", {"why": why})
        assert value is not None
        return value

    async def counters(self) -> dict[str, int]:
        await self.reporter.flush()
        return await self.store.events.counters()


ALICE = LocalNodeKey.generate()
BOB = LocalNodeKey.generate()
CAROL = LocalNodeKey.generate()


@pytest.fixture
async def rig(redis_url: str) -> AsyncIterator[Rig]:
    node = LocalNodeKey.generate()
    async with Store.from_url(redis_url, node.pubkey) as store:
        await store.allowlist.add([BOB.pubkey])
        yield Rig(store, node, Transport.NATIVE)


async def test_a_hop_online_well_before_the_try_is_left_to_lnd(rig: Rig) -> None:
    rig.peers.mark(BOB.pubkey, True)  # at 1000
    rig.clock.mono = 1010.0
    await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=1000.0 + WINDOW))
    assert rig.kept.messages == []
    assert rig.sent.to == []
    assert rig.decided.entries == ["entry"]
    assert rig.rescued("came_online") == 0
    assert (await rig.counters()).get("left_to_lnd") == 1


@pytest.mark.parametrize("since", [1000.0 + WINDOW - 0.001, 1003.0], ids=["in_window", "after"])
async def test_a_hop_that_came_online_late_is_kept_and_rescued_once(rig: Rig, since: float) -> None:
    rig.clock.mono = since
    rig.peers.mark(BOB.pubkey, True)
    rig.clock.mono = 1010.0
    await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=1000.0 + WINDOW))
    assert [m.peer for m in rig.kept.messages] == [BOB.pubkey]
    assert rig.kept.messages[0].entry == "entry"  # the store writer forgets it once written
    assert rig.decided.entries == []
    assert rig.sent.to == []  # the deliverer sends it, from the store
    # bob leaves at once: the message was not left to lnd, so it is not rescued again.
    rig.peers.mark(BOB.pubkey, False)
    rig.decider.peer_went_offline(BOB.pubkey)
    await rig.decider.store_rescued()
    assert len(rig.kept.messages) == 1
    assert rig.rescued("came_online") == 1
    assert rig.rescued("went_offline") == 0
    counters = await rig.counters()
    assert counters.get("rescued") == 1
    assert counters.get("rescued:came_online") == 1
    assert "rescued:went_offline" not in counters
    assert "left_to_lnd" not in counters


async def test_a_message_of_unknown_age_is_kept(rig: Rig) -> None:
    rig.peers.mark(BOB.pubkey, True)
    rig.clock.mono = 5000.0
    await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=None))
    assert len(rig.kept.messages) == 1
    assert rig.rescued("came_online") == 1


async def test_a_peer_the_policy_does_not_allow_is_left_to_lnd_as_before(rig: Rig) -> None:
    rig.clock.mono = 1001.0
    rig.peers.mark(CAROL.pubkey, True)  # just came: lnd may have missed it, but no mailbox
    await rig.decider.decide(rig.arrival(CAROL.pubkey, not_before=1000.0))
    assert rig.kept.messages == []
    assert rig.decided.entries == ["entry"]
    counters = await rig.counters()
    assert counters.get("left_to_lnd") == 1
    assert "dropped:not_allowed" not in counters
    assert rig.rescued("came_online") == 0


async def test_a_left_message_whose_hop_goes_offline_is_rescued_went_offline(rig: Rig) -> None:
    rig.peers.mark(BOB.pubkey, True)
    rig.clock.mono = 1010.0
    await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=1009.0))
    assert rig.kept.messages == []
    rig.clock.mono = 1010.5
    rig.peers.mark(BOB.pubkey, False)
    rig.decider.peer_went_offline(BOB.pubkey)
    await rig.decider.store_rescued()
    rig.decider.peer_went_offline(BOB.pubkey)  # told twice: rescued once
    await rig.decider.store_rescued()
    assert len(rig.kept.messages) == 1
    assert rig.rescued("went_offline") == 1
    assert rig.rescued("came_online") == 0
    counters = await rig.counters()
    assert counters.get("rescued") == 1
    assert counters.get("rescued:went_offline") == 1


async def test_what_was_left_to_lnd_just_before_its_peer_events_broke_is_rescued(
    rig: Rig,
) -> None:
    rig.clock.mono = 900.0
    rig.peers.reset({BOB.pubkey})
    rig.clock.mono = 1000.0
    await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=995.0))  # before the window
    rig.clock.mono = 1010.0
    await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=1009.0))
    assert rig.kept.messages == []  # bob was online long enough: lnd's to forward
    # lnd's peer events broke (lnd restarts: every connection drops) and come back, far
    # longer than the window later, with bob online: he may have lost what lnd forwarded.
    rig.clock.mono = 1010.5
    rig.peers.lost_sight()
    rig.decider.lost_sight()
    rig.clock.mono = 1040.0
    rig.race.prune()  # the sweeper, meanwhile
    rig.peers.reset({BOB.pubkey})
    rig.decider.regained_sight()
    await rig.decider.store_rescued()
    assert len(rig.kept.messages) == 1, "what lnd forwarded in the window before the break"
    assert rig.rescued("went_offline") == 1
    rig.decider.regained_sight()
    await rig.decider.store_rescued()
    assert len(rig.kept.messages) == 1, "rescued once"
    # And what comes next is kept too, until he has been online a whole window again.
    await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=1011.0))
    assert len(rig.kept.messages) == 2
    assert rig.rescued("came_online") == 1


async def test_a_replayed_message_is_sent_directly(rig: Rig) -> None:
    rig.peers.mark(BOB.pubkey, True)
    rig.clock.mono = 1010.0
    await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=None, replayed=True))
    assert rig.sent.to == [BOB.pubkey]
    assert rig.kept.messages == []
    assert rig.rescued("came_online") == 0


async def test_the_custom_transport_sends_to_an_online_hop_whenever_it_came(
    redis_url: str,
) -> None:
    node = LocalNodeKey.generate()
    async with Store.from_url(redis_url, node.pubkey) as store:
        rig = Rig(store, node, Transport.CUSTOM)
        rig.clock.mono = 1001.0
        rig.peers.mark(BOB.pubkey, True)
        await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=1000.0))
        assert rig.sent.to == [BOB.pubkey]
        assert rig.kept.messages == []
        assert rig.rescued("came_online") == 0


# --- the stream's stamps, over gRPC ---------------------------------------------------------


@pytest.fixture(params=list(Personality), ids=lambda p: f"lnd{p.value}")
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[tuple[SimNode, SimPeer, SimPeer]]:
    node = SimNode(request.param)
    await node.start()
    alice, bob = node.add_peer("alice"), node.add_peer("bob")
    node.open_channel(alice, scid(800_000, 3, 0))
    node.open_channel(bob, scid(800_000, 7, 1))
    alice.connect()
    try:
        yield node, alice, bob
    finally:
        await node.stop()


async def _send(node: SimNode, alice: SimPeer, bob: SimPeer) -> None:
    _, message = message_via([BlindedHopSpec(node.pubkey, next_node_id=bob.pubkey), bob.pubkey])
    assert (await alice.send_onion_message(message)).published


async def _next_message(
    messages: Subscription[IncomingOnionMessage | IncomingMalformed | IncomingLspsMessage],
) -> tuple[float, float]:
    """The next item's (read_at, not_before) on time.monotonic()."""
    item = await anext(messages)
    read_at = time.monotonic()
    assert isinstance(item, IncomingOnionMessage), item
    assert messages.lag is not None
    return read_at, read_at - messages.lag


async def test_a_backlog_keeps_the_bound_from_before_it_was_published(
    sim: tuple[SimNode, SimPeer, SimPeer],
) -> None:
    """What gRPC held while the reader was busy is found at once: no read of it had to
    wait, so its bound stays before lnd published it, however long it sat."""
    node, alice, bob = sim
    transport = Transport.NATIVE if node.personality.native_onion_messages else Transport.CUSTOM
    async with LndClient(node.endpoint) as lnd:
        messages = lnd.onion_messages(transport)
        await messages.wait_subscribed()
        first = asyncio.ensure_future(_next_message(messages))
        await _send(node, alice, bob)
        await first
        published_from = time.monotonic()
        for _ in range(30):
            await _send(node, alice, bob)
        await asyncio.sleep(0.5)  # the reader busy elsewhere: all 30 wait in gRPC
        for _ in range(30):
            read_at, not_before = await _next_message(messages)
            assert not_before <= published_from
            assert read_at - not_before >= 0.5
        await messages.aclose()


async def test_a_read_that_waits_moves_the_bound(sim: tuple[SimNode, SimPeer, SimPeer]) -> None:
    """A quiet stream is proven quiet window after window: after a quiet spell the next
    message's bound is recent, and still before lnd published it."""
    node, alice, bob = sim
    transport = Transport.NATIVE if node.personality.native_onion_messages else Transport.CUSTOM
    async with LndClient(node.endpoint) as lnd:
        messages = lnd.onion_messages(transport)
        await messages.wait_subscribed()
        subscribed = time.monotonic()
        waiting = asyncio.ensure_future(_next_message(messages))
        await asyncio.sleep(1.5)
        sent_at = time.monotonic()
        await _send(node, alice, bob)
        read_at, not_before = await waiting
        assert subscribed < not_before <= sent_at
        assert read_at - not_before < 1.0
        await messages.aclose()


# --- end to end ------------------------------------------------------------------------------


def _online_peers(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "lndmailbox_online_peers":
                return sample.value
    raise AssertionError("no lndmailbox_online_peers")


async def _daemon_sees_online(port: int, count: int) -> None:
    async def seen() -> bool:
        return await asyncio.to_thread(_online_peers, port) == count

    await wait_until(seen, what=f"the daemon to count {count} online peers")


@contextlib.asynccontextmanager
async def _native_world(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[World, int]]:
    """lnd 0.21 with a race window of 1 s, and the daemon's metrics port."""
    port = free_port()
    async with world(
        Personality.LND_0_21,
        redis_url,
        tmp_path,
        metrics_addr=f"127.0.0.1:{port}",
        race_window=1.0,
    ) as w:
        yield w, port


async def _no_mail(w: World) -> bool:
    return await w.stored_for(w.bob) == []


async def test_a_recipient_back_before_the_decision_gets_what_lnd_could_not_forward(
    redis_url: str, tmp_path: Path
) -> None:
    """The issue's fast reconnect, each step forced: bob is away when lnd tries to forward,
    lnd publishes the message all the same, bob is back (and the daemon knows it) before
    the daemon decides. Left to lnd, as the daemon did when bob was online at decision
    time, it would be lost; kept, it reaches bob, who peels it with his own key."""
    port = free_port()
    async with world(
        Personality.LND_0_21, redis_url, tmp_path, metrics_addr=f"127.0.0.1:{port}"
    ) as w:
        w.bob.connect()
        await w.start_daemon()
        await _daemon_sees_online(port, 2)
        w.bob.disconnect()
        await _daemon_sees_online(port, 1)
        # Decisions wait (the peel's ECDH is held) until bob is back.
        w.node.stall("DeriveSharedKey")
        peels = w.node.calls.get("DeriveSharedKey", 0)
        fate = await w.alice.send_onion_message(w.message_for_bob(b"back in a blink"))
        assert fate.published
        assert fate.forwarded_to is None  # lnd tried while bob was away
        await wait_until(
            lambda: w.node.calls.get("DeriveSharedKey", 0) > peels,
            what="the daemon to read it and start peeling",
        )
        w.bob.connect()
        await _daemon_sees_online(port, 2)
        w.node.unstall("DeriveSharedKey")

        await wait_until(lambda: len(w.bob.received) == 1, what="delivery to bob")
        assert await w.payloads_received(w.bob) == [b"back in a blink"]
        await counted(w, "rescued:came_online", 1)
        await wait_until(lambda: _no_mail(w), what="the delivered message to leave Redis")
        assert await counter(w, "rescued") == 1
        assert await counter(w, "rescued:went_offline") == 0
        assert await counter(w, "left_to_lnd") == 0
        assert await audit(w.store) == []


async def test_settled_recipients_are_left_to_lnd_and_the_went_offline_guard_holds(
    redis_url: str, tmp_path: Path
) -> None:
    """bob and carol online for much longer than the race window: lnd's forward is trusted,
    bob gets one copy only. carol's connection then dies before lnd says so (the forward
    fails) and her PEER_OFFLINE comes late: the message left to lnd is rescued
    (``went_offline``), once, and delivered when she is back.

    Timing enters only as margins: both online 3 s before the messages, with a 1 s window
    (the stream's bound is at most about half a second old on a quiet stream)."""
    async with _native_world(redis_url, tmp_path) as (w, port):
        carol = w.node.add_peer("carol")
        w.node.open_channel(carol, scid(800_000, 9, 1))
        w.bob.connect()
        carol.connect()
        await w.start_daemon()
        await _daemon_sees_online(port, 3)
        await asyncio.sleep(3.0)
        await w.alice.send_onion_message(w.message_for_bob(b"lnd has it"))
        await counted(w, "left_to_lnd", 1)
        assert await w.payloads_received(w.bob) == [b"lnd has it"]  # lnd's copy, no other
        assert await w.stored_for(w.bob) == []

        carol.online = False  # her connection dies; lnd has not noticed yet
        _, for_carol = message_via(
            [BlindedHopSpec(w.node.pubkey, next_node_id=carol.pubkey), carol.pubkey],
            {PAYLOAD_TYPE: b"lnd failed this one"},
        )
        fate = await w.alice.send_onion_message(for_carol)
        assert fate.forwarded_to is None
        await counted(w, "left_to_lnd", 2)
        carol.online = True
        carol.disconnect()  # the PEER_OFFLINE, late
        await counted(w, "rescued:went_offline", 1)
        carol.connect()
        await wait_until(lambda: len(carol.received) == 1, what="delivery to carol")
        peeled = await carol.peel(carol.received[0])
        assert isinstance(peeled, Receive)
        assert peeled.payload[PAYLOAD_TYPE] == b"lnd failed this one"
        assert await counter(w, "rescued") == 1
        assert await counter(w, "rescued:came_online") == 0
        assert len(w.bob.received) == 1


async def test_what_lnd_forwarded_just_before_it_restarted_reaches_the_recipient_again(
    redis_url: str, tmp_path: Path
) -> None:
    """lnd 0.21 forwards bob's message itself and restarts a moment later: the connection
    the forward went out on is gone, perhaps unread, and bob is back before the daemon's
    peer events are. lnd stays away three times the race window, so only what was set
    aside at the break can bring the message back: it is stored at the resync and
    delivered again (a duplicate if bob had read it)."""
    async with _native_world(redis_url, tmp_path) as (w, port):
        w.bob.connect()
        await w.start_daemon()
        await _daemon_sees_online(port, 2)
        await asyncio.sleep(2.0)  # bob settled: lnd's forward is trusted
        await w.alice.send_onion_message(w.message_for_bob(b"just before lnd restarts"))
        await counted(w, "left_to_lnd", 1)
        assert await w.payloads_received(w.bob) == [b"just before lnd restarts"]
        w.bob.received.clear()  # lost with the connection lnd's restart dropped

        await w.node.stop()
        await asyncio.sleep(3.0)
        await w.node.start()  # bob reconnects at once, as lnd's persistent peers do
        w.alice.connect()
        await counted(w, "rescued:went_offline", 1)
        await wait_until(lambda: len(w.bob.received) == 1, within=30, what="delivery again")
        assert await w.payloads_received(w.bob) == [b"just before lnd restarts"]
        assert await counter(w, "rescued") == 1
        assert await audit(w.store) == []


async def test_what_is_set_aside_at_a_break_is_counted_lost_if_the_daemon_stops_first(
    rig: Rig,
) -> None:
    rig.clock.mono = 900.0
    rig.peers.reset({BOB.pubkey, CAROL.pubkey})
    rig.clock.mono = 1010.0
    await rig.decider.decide(rig.arrival(BOB.pubkey, not_before=1009.0))
    await rig.decider.decide(rig.arrival(CAROL.pubkey, not_before=1009.0))  # not allowed
    rig.peers.lost_sight()
    rig.decider.lost_sight()
    stop = asyncio.Event()
    stop.set()
    await rig.decider.run(stop)  # the daemon stops before lnd's peer events are back
    counters = await rig.counters()
    assert counters.get("lost") == 2
    rig.decider.regained_sight()
    await rig.decider.store_rescued()
    assert rig.kept.messages == [], "nothing is left to store"


async def test_a_peer_the_policy_does_not_serve_is_left_to_lnd_across_a_break(rig: Rig) -> None:
    rig.clock.mono = 900.0
    rig.peers.reset({CAROL.pubkey})
    rig.clock.mono = 1010.0
    await rig.decider.decide(rig.arrival(CAROL.pubkey, not_before=1009.0))
    rig.decider.lost_sight()
    rig.decider.regained_sight()
    await rig.decider.store_rescued()
    assert rig.kept.messages == []
    counters = await rig.counters()
    assert counters.get("dropped", 0) == 0, "left to lnd, as it was: not a drop"
