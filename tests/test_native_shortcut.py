"""The native transport's shortcut: a message's next hop read from the encrypted data lnd
0.21 publishes, with the path key's ECDH alone, and the full peel only for what is kept.

Real parts (a real Redis behind the allowlist, the real policy, peer tracker, race guard
and secp256k1); lnd's signer is the node's local key, counting the points it is asked for.
A message kept is proved right by its recipient peeling it to its payload.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from lndmailbox.clock import SystemClock
from lndmailbox.daemon.decider import Decider
from lndmailbox.daemon.decision_queue import Arrival
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outgoing import OutgoingMessage
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.daemon.race_guard import RaceGuard
from lndmailbox.lnd import IncomingOnionMessage, Transport
from lndmailbox.onion import Forward, LocalNodeKey, Receive, message_via, peel
from lndmailbox.store import Store
from tests.decider_parts import Decided, Kept, NothingSent, decider_for

PAYLOAD = 65
WINDOW = 5.0


class Sent:
    """lnd's SendOnionMessage, recording."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes, bytes]] = []

    async def send(self, peer: bytes, path_key: bytes, onion: bytes) -> None:
        self.messages.append((peer, path_key, onion))


class CountingKey:
    """The node's key, as lnd's signer: every point it is asked for, in order."""

    def __init__(self, key: LocalNodeKey) -> None:
        self.key = key
        self.asked: list[bytes] = []
        self.fail_at: tuple[int, bytes] | None = None
        """(n, path key): the n-th call fails unexpectedly, unless it is for the path key."""

    async def ecdh(self, point: bytes) -> bytes:
        self.asked.append(point)
        if self.fail_at and len(self.asked) >= self.fail_at[0] and point != self.fail_at[1]:
            self.fail_at = None
            raise RuntimeError("a signer bug")
        return await self.key.ecdh(point)


@dataclass
class World:
    node: LocalNodeKey
    signer: CountingKey
    decider: Decider
    peers: PeerTracker
    kept: Kept
    metrics: Metrics
    clock: SystemClock
    store: Store

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(f"lndmailbox_{name}_total", labels) or 0.0

    def settled(self, incoming: IncomingOnionMessage) -> Arrival:
        """As the reader hands it over, lnd's try long after every online peer came."""
        return Arrival(
            incoming,
            os.urandom(8).hex(),
            received_at=self.clock.now(),
            not_before=self.clock.monotonic() + 2 * WINDOW,
        )


@pytest.fixture
async def world(redis_url: str) -> AsyncIterator[World]:
    node = LocalNodeKey.generate()
    clock = SystemClock()
    peers = PeerTracker(clock)
    signer = CountingKey(node)
    metrics, kept = Metrics(), Kept()
    async with Store.from_url(redis_url, node.pubkey) as store:
        decider = decider_for(
            store,
            node_id=node.pubkey,
            node_key=signer,
            transport=Transport.NATIVE,
            clock=clock,
            peers=peers,
            race=RaceGuard(clock, WINDOW),
            sender=NothingSent(),
            kept=kept,
            decided=Decided(),
            metrics=metrics,
            allow_channel_peers=False,
        )
        yield World(node, signer, decider, peers, kept, metrics, clock, store)


async def published(
    world: World, message_for: bytes, *, path_secret: bytes | None = None
) -> tuple[IncomingOnionMessage, bytes]:
    """A message through the node for ``message_for``, as lnd 0.21 publishes it (with this
    hop's encrypted data, which lnd takes from the peeled layer), and its payload."""
    payload = os.urandom(16)
    _, message = message_via(
        [world.node.pubkey, message_for], {PAYLOAD: payload}, path_session_key=path_secret
    )
    layer = await peel(message.path_key, message.onion, world.node)
    assert isinstance(layer, Forward)
    sender = LocalNodeKey.generate().pubkey
    incoming = IncomingOnionMessage(
        sender, message.path_key, message.onion, layer.encrypted_recipient_data
    )
    return incoming, payload


async def customer(world: World, *, online: bool) -> LocalNodeKey:
    """A user of the LSP: on the allowlist, online or not."""
    key = LocalNodeKey.generate()
    await world.store.allowlist.add([key.pubkey])
    if online:
        world.peers.mark(key.pubkey, True)
    return key


async def read_by(recipient: LocalNodeKey, kept: OutgoingMessage) -> bytes:
    """What ``recipient`` finds in a kept message, peeling it with its own key."""
    assert kept.peer == recipient.pubkey
    result = await peel(kept.path_key, kept.onion, recipient)
    assert isinstance(result, Receive)
    return result.payload[PAYLOAD]


async def test_messages_left_to_lnd_cost_one_cached_ecdh_and_no_peel(world: World) -> None:
    bob = LocalNodeKey.generate()
    world.peers.mark(bob.pubkey, True)
    path = os.urandom(32)  # one blinded path, as an offer's: every payer's path key is one
    messages = [(await published(world, bob.pubkey, path_secret=path))[0] for _ in range(3)]
    assert len({m.path_key for m in messages}) == 1
    for incoming in messages:
        await world.decider.decide(world.settled(incoming))
    assert world.kept.messages == []
    assert world.count("next_hops_read") == 3
    assert world.signer.asked == [messages[0].path_key], "the path key once, no onion key"
    assert world.metrics.registry.get_sample_value("lndmailbox_peel_seconds_count") == 0


async def test_a_message_kept_is_peeled_once_and_its_recipient_finds_the_payload(
    world: World,
) -> None:
    bob = await customer(world, online=False)
    incoming, payload = await published(world, bob.pubkey)
    await world.decider.decide(world.settled(incoming))
    (kept,) = world.kept.messages
    assert await read_by(bob, kept) == payload
    assert world.count("next_hops_read") == 1
    assert world.signer.asked[0] == incoming.path_key
    assert len(world.signer.asked) == 2, "the path key (cached for the peel), the onion key"


async def test_an_offline_peer_not_allowed_is_dropped_unpeeled(world: World) -> None:
    stranger = LocalNodeKey.generate()
    incoming, _ = await published(world, stranger.pubkey)
    await world.decider.decide(world.settled(incoming))
    assert world.kept.messages == []
    assert world.count("dropped", reason="not_allowed") == 1
    assert world.signer.asked == [incoming.path_key]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("missing", "missing"),
        ("garbage", "bad_encrypted_data"),
        ("truncated", "bad_encrypted_data"),
        ("another_path", "bad_encrypted_data"),
    ],
)
@pytest.mark.parametrize("bob_online", [False, True])
async def test_encrypted_data_that_cannot_be_read_falls_back_to_the_full_peel(
    world: World, damage: str, reason: str, bob_online: bool
) -> None:
    bob = await customer(world, online=bob_online)
    incoming, payload = await published(world, bob.pubkey)
    other, _ = await published(world, bob.pubkey)
    encrypted = {
        "missing": b"",
        "garbage": os.urandom(len(incoming.encrypted_recipient_data)),
        "truncated": incoming.encrypted_recipient_data[:-1],
        "another_path": other.encrypted_recipient_data,
    }[damage]
    damaged = IncomingOnionMessage(incoming.peer, incoming.path_key, incoming.onion, encrypted)
    await world.decider.decide(world.settled(damaged))
    assert world.count("peel_fallbacks", reason=reason) == 1
    assert world.count("next_hops_read") == 0
    if bob_online:  # decided by the peel: left to lnd, which forwarded it
        assert world.kept.messages == []
        assert world.count("dropped") == 0
    else:
        (kept,) = world.kept.messages
        assert await read_by(bob, kept) == payload


async def test_a_message_for_the_node_itself_falls_back_and_is_dropped_as_final(
    world: World,
) -> None:
    _, message = message_via([world.node.pubkey], {PAYLOAD: b"for the LSP"}, path_id=b"ours")
    final = await peel(message.path_key, message.onion, world.node)
    assert isinstance(final, Receive)
    incoming = IncomingOnionMessage(
        LocalNodeKey.generate().pubkey, message.path_key, message.onion, final.payload[4]
    )
    await world.decider.decide(world.settled(incoming))
    assert world.count("peel_fallbacks", reason="path_id_not_final") == 1
    assert world.count("dropped", reason="final_hop") == 1


async def test_a_next_hop_the_onion_contradicts_is_decided_by_the_onion(world: World) -> None:
    bob, carol = LocalNodeKey.generate(), LocalNodeKey.generate()
    await world.store.allowlist.add([bob.pubkey, carol.pubkey])
    path = os.urandom(32)  # one path key at the node, two next hops
    for_bob, payload = await published(world, bob.pubkey, path_secret=path)
    for_carol, _ = await published(world, carol.pubkey, path_secret=path)
    assert for_bob.path_key == for_carol.path_key
    lying = IncomingOnionMessage(
        for_bob.peer, for_bob.path_key, for_bob.onion, for_carol.encrypted_recipient_data
    )
    await world.decider.decide(world.settled(lying))
    assert world.count("peel_fallbacks", reason="mismatch") == 1
    (kept,) = world.kept.messages
    assert await read_by(bob, kept) == payload


async def test_a_message_left_to_lnd_is_peeled_when_its_hop_leaves_in_the_window(
    world: World,
) -> None:
    bob = await customer(world, online=True)
    incoming, payload = await published(world, bob.pubkey)
    await world.decider.decide(world.settled(incoming))
    assert world.kept.messages == []
    assert len(world.signer.asked) == 1
    world.peers.mark(bob.pubkey, False)
    world.decider.peer_went_offline(bob.pubkey)
    await world.decider.store_rescued()
    (kept,) = world.kept.messages
    assert await read_by(bob, kept) == payload
    assert world.count("rescued", why="went_offline") == 1


async def test_a_hop_that_came_online_late_is_peeled_and_kept(world: World) -> None:
    bob = await customer(world, online=False)
    incoming, payload = await published(world, bob.pubkey)
    lnd_tried = world.clock.monotonic()
    world.peers.mark(bob.pubkey, True)  # just after lnd's try: he may have been away
    arrival = Arrival(incoming, "e", received_at=world.clock.now(), not_before=lnd_tried)
    await world.decider.decide(arrival)
    (kept,) = world.kept.messages
    assert await read_by(bob, kept) == payload
    assert world.count("rescued", why="came_online") == 1


async def test_a_replayed_message_with_encrypted_data_is_peeled_and_sent(world: World) -> None:
    bob = LocalNodeKey.generate()
    world.peers.mark(bob.pubkey, True)
    sent = Sent()
    decider = decider_for(
        world.store,
        node_id=world.node.pubkey,
        node_key=world.signer,
        transport=Transport.NATIVE,
        clock=world.clock,
        peers=world.peers,
        race=RaceGuard(world.clock, WINDOW),
        sender=sent,
        kept=world.kept,
        decided=Decided(),
        metrics=world.metrics,
        allow_channel_peers=False,
    )
    incoming, payload = await published(world, bob.pubkey)
    # What a previous daemon left in the journal: lnd's try long past, the daemon sends it.
    await decider.decide(Arrival(incoming, "e", replayed=True, received_at=world.clock.now()))
    assert world.count("next_hops_read") == 1
    ((to, path_key, onion),) = sent.messages
    assert await read_by(bob, OutgoingMessage(to, incoming.peer, path_key, onion, 0.0)) == payload


async def test_what_is_set_aside_at_a_break_is_peeled_when_lnds_peer_events_are_back(
    world: World,
) -> None:
    bob = await customer(world, online=True)
    incoming, payload = await published(world, bob.pubkey)
    await world.decider.decide(world.settled(incoming))
    assert world.signer.asked == [incoming.path_key], "left to lnd unpeeled"
    world.peers.lost_sight()
    world.decider.lost_sight()
    world.peers.reset({bob.pubkey})
    world.decider.regained_sight()
    await world.decider.store_rescued()
    (kept,) = world.kept.messages
    assert await read_by(bob, kept) == payload


async def test_a_message_peeled_before_it_was_left_to_lnd_is_not_peeled_again(
    world: World,
) -> None:
    bob = await customer(world, online=True)
    incoming, payload = await published(world, bob.pubkey)
    unreadable = IncomingOnionMessage(incoming.peer, incoming.path_key, incoming.onion, b"")
    await world.decider.decide(world.settled(unreadable))  # peeled in full: no data
    asked = len(world.signer.asked)
    world.peers.mark(bob.pubkey, False)
    world.decider.peer_went_offline(bob.pubkey)
    await world.decider.store_rescued()
    (kept,) = world.kept.messages
    assert await read_by(bob, kept) == payload
    assert len(world.signer.asked) == asked


async def test_a_rescue_whose_onion_names_another_hop_is_stored_for_the_onions(
    world: World,
) -> None:
    bob, carol = LocalNodeKey.generate(), LocalNodeKey.generate()
    await world.store.allowlist.add([bob.pubkey, carol.pubkey])
    world.peers.mark(carol.pubkey, True)
    path = os.urandom(32)
    for_bob, payload = await published(world, bob.pubkey, path_secret=path)
    for_carol, _ = await published(world, carol.pubkey, path_secret=path)
    lying = IncomingOnionMessage(
        for_bob.peer, for_bob.path_key, for_bob.onion, for_carol.encrypted_recipient_data
    )
    await world.decider.decide(world.settled(lying))  # left to lnd, for carol by the data
    assert world.kept.messages == []
    world.peers.mark(carol.pubkey, False)
    world.decider.peer_went_offline(carol.pubkey)
    await world.decider.store_rescued()
    assert world.count("peel_fallbacks", reason="mismatch") == 1
    (kept,) = world.kept.messages
    assert await read_by(bob, kept) == payload


async def test_a_rescue_that_fails_is_counted_and_the_next_one_goes_on(world: World) -> None:
    bob = await customer(world, online=True)
    path = os.urandom(32)
    first, _ = await published(world, bob.pubkey, path_secret=path)
    second, payload = await published(world, bob.pubkey, path_secret=path)
    # A packet lnd would not have published, its data readable: left to lnd unpeeled...
    broken = IncomingOnionMessage(
        first.peer,
        first.path_key,
        first.onion[:-1] + bytes([first.onion[-1] ^ 1]),
        first.encrypted_recipient_data,
    )
    for incoming in (broken, first, second):
        await world.decider.decide(world.settled(incoming))
    assert world.kept.messages == []
    # ...its peel fails when bob leaves; a signer failing unexpectedly loses the next one;
    # neither stops the rescue of the third, nor raises into the caller.
    world.signer.fail_at = (len(world.signer.asked) + 2, first.path_key)
    world.peers.mark(bob.pubkey, False)
    world.decider.peer_went_offline(bob.pubkey)
    await world.decider.store_rescued()
    assert world.count("dropped", reason="bad_hmac") == 1
    assert world.count("dropped", reason="internal_error") == 1
    (kept,) = world.kept.messages
    assert await read_by(bob, kept) == payload
