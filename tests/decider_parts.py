"""A decider built from real parts (the store's allowlist, a real policy, peer tracker and
race guard) with the writer's, journal's and channels' parts standing by as recorders."""

from __future__ import annotations

from lndmailbox.clock import Clock
from lndmailbox.daemon.decider import Decider
from lndmailbox.daemon.decision_queue import DecisionQueue
from lndmailbox.daemon.interfaces import Sender
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.outgoing import OutgoingMessage
from lndmailbox.daemon.peers import ChannelMap, PeerTracker
from lndmailbox.daemon.policy import Policy
from lndmailbox.daemon.race_guard import RaceGuard
from lndmailbox.lnd import ChannelIndex, Transport
from lndmailbox.onion import CachedNodeKey, NodeKey
from lndmailbox.store import Store


class NoChannels:
    async def channel_index(self) -> ChannelIndex:
        return ChannelIndex((), {})


class NothingSent:
    async def send(self, peer: bytes, path_key: bytes, onion: bytes) -> None:
        raise AssertionError("nothing is sent")


class Kept:
    """The store writer's part: what it was given to keep."""

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []

    def keep(self, message: OutgoingMessage) -> None:
        self.messages.append(message)


class Decided:
    """The journal's part: which entries were decided."""

    def __init__(self) -> None:
        self.entries: list[str | None] = []

    def decided(self, entry: str | None) -> None:
        self.entries.append(entry)


def decider_for(
    store: Store,
    *,
    node_id: bytes,
    node_key: NodeKey,
    transport: Transport,
    clock: Clock,
    peers: PeerTracker,
    race: RaceGuard,
    sender: Sender,
    kept: Kept,
    decided: Decided,
    metrics: Metrics,
    allow_channel_peers: bool,
    queue: DecisionQueue | None = None,
    workers: int = 1,
    reporter: Reporter | None = None,
    path_keys: NodeKey | None = None,
) -> Decider:
    """A decider with no channels, whose policy reads ``store``'s allowlist."""
    channels = ChannelMap(NoChannels(), clock)
    return Decider(
        node_id=node_id,
        node_key=node_key,
        path_keys=path_keys or CachedNodeKey(node_key),
        transport=transport,
        peers=peers,
        channels=channels,
        policy=Policy(
            allowlist=store.allowlist,
            channels=channels,
            clock=clock,
            allow_channel_peers=allow_channel_peers,
        ),
        sender=sender,
        keeper=kept,
        journal=decided,
        race=race,
        reporter=reporter or Reporter(node=node_id, metrics=metrics, events=store.events),
        metrics=metrics,
        clock=clock,
        queue=queue or DecisionQueue(),
        workers=workers,
    )
