"""Traffic for the crash and flapping scenarios, and the ledger that judges every message.

A sender (alice, always online) streams onion messages, about one every 10 ms, through
simnet's node to several recipients that flap online and offline every 30 to 300 ms. Now
and then a recipient stays online longer than the daemon's race window: a phone that
stays a while. Without such stays the native transport's race guard (which keeps what was
left to lnd for a peer that goes offline within the window) would hide the fast-reconnect
race of issue 13, and the tests could not fail on it.

The sender notes when simnet published each message, how many subscribers heard it and
what lnd did with it (:class:`simnet.IngestResult`). :func:`judge` then puts every message
in one class:

- forwarded by lnd itself (lnd 0.21, recipient online): must have arrived;
- published while nobody was subscribed (``unheard``): lnd keeps nothing for a missing
  subscriber, so a lone daemon cannot have it; reported, not a failure;
- heard only by the stream of a daemon already killed (the node had not yet noticed the
  dead connection): the same, reported;
- heard by a live daemon: must have arrived, unless it was published within the bound
  before that daemon's kill (read from lnd, not journaled yet: ``in_memory``). Any other
  loss is a failure, and is told apart: one the journal held at a kill (the next daemon
  did not deliver it); one published within a second before a kill but beyond the bound;
  with no kill near, on lnd 0.21, one lnd had failed to forward whose recipient came back
  within moments (the daemon left it to lnd: the fast-reconnect race); or an unexplained
  one.

Every message that arrived was peeled by its recipient with the recipient's own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

from simnet import IngestResult, Personality, SimNode, SimPeer

from lndmailbox.config import Settings
from lndmailbox.onion import BlindedHopSpec, Forward, Receive, message_via, peel
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import Store
from lndmailbox.store.audit import audit
from tests.daemon_harness import PAYLOAD_TYPE, wait_until

SEND_GAP = (0.0, 0.02)
"""Seconds between two messages of the sender: about one every 10 ms."""
FLAP = (0.03, 0.3)
"""Seconds a recipient stays online, or offline, before it flaps."""
STAY_CHANCE = 0.1
"""How often an online spell is a stay longer than the race window instead."""
SLEEP_CHANCE = 0.15
SLEEP = (2.0, 5.0)
"""How often an offline spell is a phone's sleep instead, and how long: so that recipients
are offline about half the time, as the stays alone would keep them online most of it."""
TICK = 0.005
STALL = 0.01
"""The test's event loop runs simnet too: a message it published waits in simnet while the
loop is stalled (a garbage collection of the test's own large heap, a busy machine) and no
daemon could have read it then. A tick of :data:`TICK` that comes more than this late is
such a stall, and the in-memory window of a loss leaves it out."""
NEAR_A_KILL = 1.0
"""A loss this close before a kill and beyond the bound is reported as beyond the bound,
whatever its shape."""
RACE_SHAPE_WITHIN = 1.0
"""A lost message whose recipient came back this soon after lnd failed to forward it has
the shape of the fast-reconnect race: the daemon decided after the recipient was back.
Measured before the fix, those recipients were back 0 to 7 ms after lnd's publication on
a quiet machine and up to 163 ms at a load of 5 on 2 cores, where the daemon's decisions
lag; a second covers both. Only the failure message depends on it."""
IN_MEMORY_BOUND = 0.075
"""Seconds before its kill within which a message a killed daemon lost must have been
published: what the daemon has read from lnd and not yet journaled dies with it (lnd's
streams carry no acknowledgement). The journal writes every 2 ms, in one Redis round trip;
what widens the window is the daemon's event loop busy elsewhere (delivering, confirming)
while lnd's stream waits to be read.

Measured (the widest such loss of each run, CI form, 50 kills, 2 cores shared with other
test runs, load average 1 to 3): lnd 0.20: 6.9, 9.2, 6.4 ms before race-safe decisions and
confirmed delivery were merged, 16.6, 5.5 ms after; lnd 0.21: 6.1, 9.8, 7.4 ms before,
22.5, 32.1 ms after (0.21's figures before leave out the losses that had the race's shape
too; after, the daemon sends each message to a flapping recipient up to four times, more
work beside the reader). 75 ms is over twice the widest, and a seventh of the 0.5 s the
test allowed before. On an oversubscribed machine the tail is the scheduler's: at a load
average of 5 on the same 2 cores, 300 kills on lnd 0.20 (before the merge) lost 29 of
49,648 messages more than 50 ms before their kill, up to 130 ms, at 7 of the kills, each
kill's losses a run of consecutive messages (the daemon, its Redis and simnet waiting for
a core). Run the long form on a machine that is not busy with something else."""


def message_stream(personality: Personality) -> str:
    """The simnet stream that carries onion messages to the daemon on this generation."""
    return "onion_messages" if personality.native_onion_messages else "custom_messages"


def stay_range() -> tuple[float, float]:
    """Seconds of a long stay online: past the daemon's default race window."""
    window = Settings().race_window
    return (window * 1.1, window * 1.6)


@dataclass(frozen=True)
class Sent:
    text: bytes
    recipient: bytes
    at: float
    """time.monotonic() when simnet published (or dropped) it: nothing runs in between."""
    result: IngestResult


@dataclass
class Network:
    """simnet's node with alice, the recipients, and zed: a peer that stays offline until
    the end, so a message to zed is always stored (a marker that the daemon caught up)."""

    node: SimNode
    alice: SimPeer
    recipients: list[SimPeer]
    zed: SimPeer

    @classmethod
    async def start(cls, personality: Personality, recipients: int = 4) -> Network:
        node = SimNode(personality, onion_rate_limits=None)
        await node.start()
        alice = node.add_peer("alice")
        node.open_channel(alice, scid(800_000, 1, 0))
        peers = []
        for i in range(recipients):
            peer = node.add_peer(f"recipient{i}")
            node.open_channel(peer, scid(800_000, 10 + i, 0))
            peers.append(peer)
        zed = node.add_peer("zed")
        node.open_channel(zed, scid(800_000, 99, 0))
        alice.connect()
        return cls(node, alice, peers, zed)

    def unsubscribed(self) -> bool:
        return self.node.subscriber_count(message_stream(self.node.personality)) == 0

    async def send(self, peer: SimPeer, text: bytes) -> Sent:
        _, message = message_via(
            [BlindedHopSpec(self.node.pubkey, next_node_id=peer.pubkey), peer.pubkey],
            {PAYLOAD_TYPE: text},
        )
        result = await self.alice.send_onion_message(message)
        return Sent(text, peer.pubkey, time.monotonic(), result)

    async def caught_up(self, store: Store) -> None:
        """Returns once the daemon has read and decided everything published so far: a
        marker to zed (offline) is stored after every message before it was read, then the
        journal empties and every recipient's queue drains (each twice, a moment apart,
        for a message still between the journal and its decision)."""
        before = len(await store.queues.messages(self.zed.pubkey))
        await self.send(self.zed, b"zed marker %d" % before)

        async def marker_stored() -> bool:
            return len(await store.queues.messages(self.zed.pubkey)) > before

        await wait_until(marker_stored, within=30, what="the daemon to store the marker")
        for _ in range(2):
            await wait_until(
                lambda: settled(store, self.recipients), within=60, what="the mailbox to drain"
            )
            await asyncio.sleep(0.3)

    async def deliver_zed(self, store: Store) -> None:
        self.zed.connect()

        async def empty() -> bool:
            return await store.queues.messages(self.zed.pubkey) == []

        await wait_until(empty, within=30, what="the markers to reach zed")


async def held_in_redis(store: Store, peers: Sequence[SimPeer]) -> dict[str, tuple[bytes, bytes]]:
    """What Redis holds for ``peers`` now, by message id: (recipient, payload), each
    peeled with its recipient's own key. Read while no daemon runs, it is what the next
    daemon must deliver."""
    out = {}
    for peer in peers:
        for held in await store.queues.messages(peer.pubkey):
            peeled = await peer.peel(OnionMessage(held.path_key, held.onion))
            assert isinstance(peeled, Receive), f"{held.id} for {peer.name} does not peel"
            out[held.id] = (peer.pubkey, peeled.payload[PAYLOAD_TYPE])
    return out


def undelivered(
    held: dict[str, tuple[bytes, bytes]], received: dict[bytes, Counter[bytes]], books: Books
) -> list[str]:
    """The messages Redis held at a kill that never reached their recipient, or whose
    ``delivered`` event is missing."""
    out = [
        f"{text!r}, held in Redis at a kill (id {id}), never reached its recipient"
        for id, (peer, text) in held.items()
        if not received[peer][text]
    ]
    out += [
        f"{id}, held in Redis at a kill, has no delivered event"
        for id in sorted(held.keys() - set(books.delivered))
    ]
    return out


async def journaled_texts(store: Store, net: Network) -> set[bytes]:
    """The payloads of the messages the journal holds now (read while no daemon runs: what
    the next daemon must decide), each peeled with the node's key, then its recipient's."""
    out = set()
    for entry in await store.journal.pending():
        hop = await peel(entry.path_key, entry.onion, net.node.key)
        if not isinstance(hop, Forward) or hop.next_node_id not in net.node.peers:
            continue  # not one of the traffic's messages
        peer = net.node.peers[hop.next_node_id]
        peeled = await peer.peel(OnionMessage(hop.next_path_key, hop.next_onion))
        if isinstance(peeled, Receive):
            out.add(peeled.payload[PAYLOAD_TYPE])
    return out


async def settled(store: Store, peers: Sequence[SimPeer]) -> bool:
    if await store.journal.pending():
        return False
    for peer in peers:
        if await store.queues.messages(peer.pubkey):
            return False
    return True


@dataclass
class Traffic:
    """The sender and the flapping recipients, as background tasks until :meth:`stop`."""

    net: Network
    rng: random.Random
    sent: list[Sent] = field(default_factory=list)
    online_at: dict[bytes, list[float]] = field(default_factory=dict)
    """Per recipient, when it came online (monotonic), in order."""
    stalls: list[tuple[float, float]] = field(default_factory=list)
    """When the test's event loop (simnet with it) ran nothing else, longer than
    :data:`STALL`: (from, to), monotonic."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        seeds = [self.rng.getrandbits(64) for _ in range(len(self.net.recipients) + 1)]
        self._tasks.append(asyncio.create_task(self._send(random.Random(seeds[0]))))
        self._tasks.append(asyncio.create_task(self._watch()))
        for peer, seed in zip(self.net.recipients, seeds[1:], strict=True):
            self.online_at[peer.pubkey] = []
            self._tasks.append(asyncio.create_task(self._flap(peer, random.Random(seed))))

    async def stop(self) -> None:
        """Stops sending and flapping; every recipient ends online (the ones offline come
        back at once: the last messages meet the fast-reconnect race too)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for peer in self.net.recipients:
            if not peer.online:
                self._connect(peer)

    async def _send(self, rng: random.Random) -> None:
        counter = 0
        due = time.monotonic()
        while True:
            peer = rng.choice(self.net.recipients)
            self.sent.append(await self.net.send(peer, b"%s %d" % (peer.name.encode(), counter)))
            counter += 1
            # Paced by the clock, not by the gaps alone: building and sending take time too.
            due += rng.uniform(*SEND_GAP)
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _flap(self, peer: SimPeer, rng: random.Random) -> None:
        stay = stay_range()
        while True:
            if peer.online:
                long = rng.random() < STAY_CHANCE
                await asyncio.sleep(rng.uniform(*stay) if long else rng.uniform(*FLAP))
                peer.disconnect()
            else:
                asleep = rng.random() < SLEEP_CHANCE
                await asyncio.sleep(rng.uniform(*SLEEP) if asleep else rng.uniform(*FLAP))
                self._connect(peer)

    async def _watch(self) -> None:
        """Notes the loop's stalls: a tick that comes late by more than :data:`STALL`."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            if now - last > TICK + STALL:
                self.stalls.append((last + TICK, now))
            last = now

    def stalled(self, start: float, end: float) -> float:
        """Seconds of :attr:`stalls` between ``start`` and ``end``."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.stalls)

    def _connect(self, peer: SimPeer) -> None:
        peer.connect()
        self.online_at[peer.pubkey].append(time.monotonic())

    def back_after(self, sent: Sent) -> float | None:
        """Seconds from ``sent``'s publication to its recipient's next coming online."""
        later = [t for t in self.online_at.get(sent.recipient, []) if t >= sent.at]
        return min(later) - sent.at if later else None


async def received_texts(peers: Sequence[SimPeer]) -> dict[bytes, Counter[bytes]]:
    """Per recipient, each payload it received and how many times: every message it got
    peeled with its own key, and each must be for it."""
    out: dict[bytes, Counter[bytes]] = {}
    for peer in peers:
        texts: Counter[bytes] = Counter()
        for message in peer.received:
            peeled = await peer.peel(message)
            assert isinstance(peeled, Receive), f"{peer.name} got a message it cannot read"
            text = peeled.payload[PAYLOAD_TYPE]
            assert text.startswith(peer.name.encode() + b" "), f"{peer.name} got {text!r}"
            texts[text] += 1
        out[peer.pubkey] = texts
    return out


@dataclass(frozen=True)
class Life:
    """One daemon's life: from its start to its kill (``inf``: it was not killed)."""

    started: float
    killed: float = float("inf")
    ready: float | None = None
    """When the test saw it lead, ready (None: killed in its start-up)."""


@dataclass(frozen=True)
class Loss:
    """A message a live daemon heard that never reached its recipient."""

    sent: Sent
    before_kill: float
    """Seconds from its publication to the kill of the daemon that heard it (inf: none)."""
    stalled: float
    """Of those, the seconds simnet itself (the test's event loop) was stalled: it had
    published the message but could not yet hand it to the daemon's stream."""
    back: float | None
    """Seconds from its publication to its recipient's coming online again (None: never)."""
    since_ready: float | None
    """Seconds from its daemon's being ready to its publication."""

    @property
    def window(self) -> float:
        """Seconds before the kill the daemon could have had it: simnet's stalls left out."""
        return self.before_kill - self.stalled

    def describe(self) -> str:
        when = (
            "with no kill after it"
            if self.before_kill == float("inf")
            else f"{self.before_kill * 1000:.1f} ms before a kill"
        )
        if self.stalled:
            when += f" ({self.stalled * 1000:.1f} ms of it simnet stalled)"
        back = "never" if self.back is None else f"{self.back * 1000:.1f} ms later"
        fate = self.sent.result.drop_reason or "published"
        since = (
            ""
            if self.since_ready is None
            else f", {self.since_ready * 1000:.0f} ms after its daemon was ready"
        )
        return f"{self.sent.text!r} (lost {when}{since}; lnd: {fate}; recipient back {back})"


@dataclass
class Verdict:
    personality: Personality
    bound: float
    sent: int = 0
    forwarded_by_lnd: int = 0
    dropped_by_lnd: list[Sent] = field(default_factory=list)
    unheard: int = 0
    unheard_lost: int = 0
    to_dead: int = 0
    to_dead_lost: int = 0
    checked: int = 0
    """Heard by a live daemon (forwarded by lnd too or not): each must arrive, unless
    published within ``bound`` before that daemon's kill."""
    no_excuse: int = 0
    """Of those, the ones published more than ``bound`` before any kill."""
    in_memory: list[Loss] = field(default_factory=list)
    """Lost, published within ``bound`` before the kill of the daemon that heard them."""
    journaled: list[Loss] = field(default_factory=list)
    """Lost, though Redis held them in the journal at a kill: the next daemon did not
    decide them (or decided them wrongly)."""
    beyond_bound: list[Loss] = field(default_factory=list)
    """Lost, published more than ``bound`` but less than :data:`NEAR_A_KILL` before a
    kill: a daemon that held them unjournaled longer than the bound, or the race below
    (the two cannot be told apart from outside)."""
    race: list[Loss] = field(default_factory=list)
    """Lost with the fast-reconnect shape, no kill near: lnd failed to forward, the
    recipient was back within moments, and the daemon left the message to lnd."""
    unexplained: list[Loss] = field(default_factory=list)
    lost_by_lnd: list[Sent] = field(default_factory=list)
    """lnd said it forwarded them and the recipient does not have them (a simnet bug)."""
    copies: int = 0
    delivered: int = 0
    stalls: list[tuple[float, float]] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.copies - self.delivered

    @property
    def widest_in_memory(self) -> float:
        return max((loss.window for loss in self.in_memory), default=0.0)

    def near_kills(self, near: float = 1.0) -> str:
        """Every loss published within ``near`` seconds before a kill, whatever its class,
        widest first: what measuring the in-memory window looks at."""
        losses = [
            loss
            for loss in (*self.in_memory, *self.beyond_bound, *self.race, *self.unexplained)
            if loss.before_kill <= near
        ]
        losses.sort(key=lambda loss: -loss.before_kill)
        return "; ".join(loss.describe() for loss in losses) or "none"

    def failures(self) -> list[str]:
        lines = [
            f"journaled and lost: {loss.describe()}: Redis held it in the journal at the "
            "kill, and the next daemon did not deliver it"
            for loss in self.journaled
        ]
        lines += [
            f"beyond the bound: {loss.describe()}: more than {self.bound * 1000:.0f} ms "
            "unjournaled in the killed daemon"
            + (
                " (or the fast-reconnect race: lnd failed, the recipient was back at once)"
                if self._race_shaped(loss)
                else ""
            )
            for loss in self.beyond_bound
        ]
        lines += [
            f"fast-reconnect race: {loss.describe()}: lnd 0.21 failed to forward it, and the "
            "daemon, seeing the recipient back, left it to lnd (left_to_lnd)"
            + (
                "; the race guard's rescue died with the daemon killed after it"
                if loss.before_kill < float("inf")
                else ""
            )
            for loss in self.race
        ]
        lines += [
            f"unexplained: {loss.describe()}: heard by a live daemon more than "
            f"{self.bound * 1000:.0f} ms before any kill"
            for loss in self.unexplained
        ]
        lines += [f"{s.text!r}: forwarded by lnd and never received" for s in self.lost_by_lnd]
        lines += [
            f"{s.text!r}: dropped by lnd ({s.result.drop_reason})" for s in self.dropped_by_lnd
        ]
        return lines

    def _longest_stall(self) -> float:
        return max((b - a for a, b in self.stalls), default=0.0)

    def _race_shaped(self, loss: Loss) -> bool:
        return (
            self.personality.native_onion_messages
            and loss.sent.result.drop_reason == "next_hop_offline"
            and loss.back is not None
            and loss.back <= RACE_SHAPE_WITHIN
        )

    def summary(self, kills: int) -> str:
        windows = sorted(round(loss.window * 1000, 1) for loss in self.in_memory)
        around_kills = (
            f"{self.no_excuse} of them published more than {self.bound * 1000:.0f} ms before "
            f"any kill; lost: {len(self.in_memory)} in a killed daemon's memory (widest "
            f"{self.widest_in_memory * 1000:.1f} ms before its kill; all, ms: {windows}), "
            f"{self.unheard_lost} of {self.unheard} published with no daemon subscribed, "
            f"{self.to_dead_lost} of {self.to_dead} heard only by a killed daemon's stream, "
            f"{len(self.journaled)} journaled at a kill, {len(self.beyond_bound)} beyond the "
            "bound, "
            if kills
            else "lost: "
        )
        return (
            f"{self.personality.release}: {kills} kills, {self.sent} messages sent, "
            f"{self.forwarded_by_lnd} forwarded by lnd itself; {self.checked} heard by a live "
            f"daemon, {around_kills}{len(self.race)} to the fast-reconnect race, "
            f"{len(self.unexplained)} unexplained; {self.delivered} delivered, "
            f"{self.duplicates} duplicates; simnet stalled {len(self.stalls)} times over "
            f"{STALL * 1000:.0f} ms, the longest {self._longest_stall() * 1000:.0f} ms "
            f"(load average at the end "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )


def judge(
    personality: Personality,
    traffic: Traffic,
    received: dict[bytes, Counter[bytes]],
    lives: Sequence[Life],
    *,
    bound: float,
    journaled: Set[bytes] = frozenset(),
) -> Verdict:
    """Puts every message sent in its class (the module's docstring). A loss published
    within ``bound`` seconds before the kill of the daemon that heard it was held in that
    daemon's memory, unless it is among ``journaled`` (the payloads the journal held at a
    kill); any other loss of a message a live daemon heard is a failure."""
    v = Verdict(personality, bound, stalls=traffic.stalls)
    kills = sorted(life.killed for life in lives)
    for s in traffic.sent:
        v.sent += 1
        arrived = received[s.recipient][s.text] > 0
        if not s.result.published:
            v.dropped_by_lnd.append(s)
            continue
        live = s.result.subscribers and any(life.started <= s.at < life.killed for life in lives)
        next_kill = next((k for k in kills if k >= s.at), float("inf"))
        before_kill = next_kill - s.at
        if live:
            # lnd forwarded it or not, a live daemon heard it and decided on it.
            v.checked += 1
            v.no_excuse += before_kill - traffic.stalled(s.at, next_kill) > bound
        if s.result.forwarded_to is not None:
            v.forwarded_by_lnd += 1
            if not arrived:
                v.lost_by_lnd.append(s)
            continue
        if not s.result.subscribers:
            v.unheard += 1
            v.unheard_lost += not arrived
            continue
        if not live:
            v.to_dead += 1
            v.to_dead_lost += not arrived
            continue
        if arrived:
            continue
        life = next(life for life in lives if life.started <= s.at < life.killed)
        since = None if life.ready is None else s.at - life.ready
        loss = Loss(s, before_kill, traffic.stalled(s.at, next_kill), traffic.back_after(s), since)
        if s.text in journaled:
            v.journaled.append(loss)
        elif loss.window <= bound:
            v.in_memory.append(loss)
        elif loss.window <= NEAR_A_KILL:
            v.beyond_bound.append(loss)
        elif v._race_shaped(loss):
            v.race.append(loss)
        else:
            v.unexplained.append(loss)
    for texts in received.values():
        v.copies += sum(texts.values())
        v.delivered += len(texts)
    return v


def seeded(variable: str, what: str) -> random.Random:
    """A random generator seeded from ``variable`` if set, else at random; prints the seed.
    A replay repeats the test's own choices (sends, flaps, kill moments), not the
    scheduling of the processes."""
    seed = int(os.environ.get(variable) or int.from_bytes(os.urandom(4), "big"))
    print(f"\n{what} seed {seed} (replay with {variable}={seed})")
    return random.Random(seed)


@dataclass(frozen=True)
class Books:
    """What the daemon wrote down in Redis, read at the end of a run."""

    counters: dict[str, int]
    stored: list[str]
    delivered: list[str]
    problems: list[str]

    @classmethod
    async def read(cls, store: Store) -> Books:
        events = []
        last = "0-0"
        while batch := await store.events.read(last, count=10_000):
            events += batch
            last = batch[-1].stream_id
        return cls(
            counters=await store.events.counters(),
            stored=[e.message_id for e in events if e.kind == "stored"],
            delivered=[e.message_id for e in events if e.kind == "delivered"],
            problems=await audit(store),
        )

    def disagreements(self) -> list[str]:
        """Where the counters, the events and the mailbox disagree, or something was stored
        and never delivered, or the daemon counted a loss."""
        out = [f"audit: {p}" for p in self.problems]
        if self.counters.get("stored", 0) != len(self.stored):
            out.append(
                f"{self.counters.get('stored', 0)} counted stored, {len(self.stored)} events"
            )
        if self.counters.get("delivered", 0) != len(self.delivered):
            out.append(
                f"{self.counters.get('delivered', 0)} counted delivered, "
                f"{len(self.delivered)} events"
            )
        never = set(self.stored) - set(self.delivered)
        if never:
            out.append(f"{len(never)} stored and never delivered: {sorted(never)[:5]}")
        if self.counters.get("lost", 0):
            out.append(f"the daemon counted {self.counters['lost']} lost")
        return out
