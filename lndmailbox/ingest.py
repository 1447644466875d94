"""Ingest: peel each incoming onion message once and decide what becomes of it.

The rules, in order, for a message that arrived from ``sender``:

1. It must peel (one layer, ECDH through lnd's signer). If not: drop, reason from the
   typed :class:`~lndmailbox.errors.OnionError`.
2. If we are its final hop: not the mailbox's business (drop ``final_hop``).
3. The next hop is named by node id, or by short_channel_id resolved through lnd's
   channels and aliases (unknown: drop ``unknown_scid``). A next hop equal to the sender
   (``loopback``) or to our own node (``next_hop_is_self``) is dropped.
4. Next hop online: the custom transport sends it now; the native transport leaves it to
   lnd, which forwards it itself, and remembers it for the race window (below).
5. Next hop offline: stored if the peer is allowed (the allowlist in Redis, or with
   ``allow_channel_peers`` any channel peer), else dropped ``not_allowed``.

The native transport's race: lnd publishes a message whether or not its own forward
worked, and our view of who is online can lag lnd's. So messages left to lnd are kept in
memory for ``race_window`` seconds; if their next hop's PEER_OFFLINE arrives inside that
window, they are stored after all. A duplicate is better than a loss; both are counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from lndmailbox.clock import Clock
from lndmailbox.errors import LndError, OnionError, PeerOfflineError
from lndmailbox.lnd import IncomingOnionMessage, Transport
from lndmailbox.metrics import Metrics
from lndmailbox.parcel import Parcel, Send
from lndmailbox.peers import ChannelMap, PeerTracker
from lndmailbox.report import Reporter
from lndmailbox.sphinx import Forward, NodeKey, peel

log = logging.getLogger("lndmailbox.mailbox")

IsAllowed = Callable[[bytes], Awaitable[bool]]


class RaceGuard:
    """Messages left to lnd in the last ``window`` seconds, per next hop (native only)."""

    def __init__(self, clock: Clock, window: float, *, per_peer: int = 256) -> None:
        self._clock = clock
        self._window = window
        self._per_peer = per_peer
        self._recent: dict[bytes, deque[tuple[float, Parcel]]] = {}
        self._remembered = 0

    def remember(self, parcel: Parcel) -> None:
        if self._window <= 0:
            return
        queue = self._recent.setdefault(parcel.peer, deque(maxlen=self._per_peer))
        queue.append((self._clock.monotonic(), parcel))
        self._forget_old(parcel.peer)
        self._remembered += 1
        if self._remembered % 1024 == 0:
            self.prune()

    def take(self, peer: bytes, offline_since: float) -> list[Parcel]:
        """Parcels for ``peer`` left to lnd no earlier than ``window`` before it went offline."""
        queue = self._recent.pop(peer, None)
        if not queue:
            return []
        return [parcel for at, parcel in queue if at >= offline_since - self._window]

    def _forget_old(self, peer: bytes) -> None:
        queue = self._recent[peer]
        horizon = self._clock.monotonic() - self._window
        while queue and queue[0][0] < horizon:
            queue.popleft()

    def prune(self) -> None:
        for peer in list(self._recent):
            self._forget_old(peer)
            if not self._recent[peer]:
                del self._recent[peer]


class Ingest:
    def __init__(
        self,
        *,
        node_id: bytes,
        node_key: NodeKey,
        transport: Transport,
        peers: PeerTracker,
        channels: ChannelMap,
        is_allowed: IsAllowed,
        send: Send,
        clock: Clock,
        keep: Callable[[Parcel], None],
        decided: Callable[[str | None], None],
        race: RaceGuard,
        reporter: Reporter,
        metrics: Metrics,
    ) -> None:
        self._node_id = node_id
        self._node_key = node_key
        self._transport = transport
        self._peers = peers
        self._channels = channels
        self._is_allowed = is_allowed
        self._send = send
        self._clock = clock
        self._keep = keep
        self._decided = decided
        self._race = race
        self._reporter = reporter
        self._metrics = metrics

    async def handle(
        self,
        message: IncomingOnionMessage,
        entry: str | None = None,
        *,
        replayed: bool = False,
        received_at: float | None = None,
    ) -> None:
        """Decides one incoming message. Never raises for anything a peer can send.

        ``entry`` is the message's inbox entry: forgotten here once the message is decided,
        or by the keeper once it is stored. ``replayed``: a message a previous daemon read
        and did not decide; lnd may not have forwarded it, so we forward it ourselves.
        """
        kept = False
        try:
            kept = await self._decide(message, entry, replayed, received_at)
        except asyncio.CancelledError:
            raise  # undecided: it stays journaled and the next daemon decides it
        except Exception:
            log.exception("unexpected error while deciding a message; it was dropped")
            self._reporter.dropped("internal_error", sender=message.peer)
        if not kept:
            self._decided(entry)

    async def _decide(
        self,
        message: IncomingOnionMessage,
        entry: str | None,
        replayed: bool,
        received_at: float | None,
    ) -> bool:
        """True when the message went to the keeper (which then owns its inbox entry)."""
        sender = message.peer
        self._reporter.received(sender, len(message.path_key) + len(message.onion))
        started = time.perf_counter()
        try:
            result = await peel(message.path_key, message.onion, self._node_key)
        except OnionError as e:
            self._reporter.dropped(e.reason, sender=sender)
            return False
        except LndError as e:
            # Our signer failed us, not the peer: the message is lost to us, say so loudly.
            log.error("ECDH through lnd failed (%s); message from %s dropped", e, sender.hex())
            self._reporter.dropped("signer_unavailable", sender=sender)
            return False
        finally:
            self._metrics.peel_seconds.observe(time.perf_counter() - started)
        if not isinstance(result, Forward):
            self._reporter.dropped("final_hop", sender=sender)
            return False
        peer = await self._next_hop(result, sender)
        if peer is None:
            return False
        parcel = Parcel(
            peer,
            sender,
            result.next_path_key,
            result.next_onion,
            received_at if received_at is not None else self._clock.now(),
            entry,
        )
        if self._peers.is_online(peer):
            return await self._hand_to_online_peer(parcel, replayed)
        return await self._keep_if_allowed(parcel)

    async def _next_hop(self, forward: Forward, sender: bytes) -> bytes | None:
        peer = forward.next_node_id
        if peer is None:
            assert forward.short_channel_id is not None
            try:
                peer = await self._channels.peer_for(forward.short_channel_id)
            except LndError as e:
                log.warning("could not list lnd's channels: %s", e)
                peer = None
            if peer is None:
                self._reporter.dropped("unknown_scid", sender=sender)
                return None
        if peer == sender:
            self._reporter.dropped("loopback", sender=sender, peer=peer)
            return None
        if peer == self._node_id:
            self._reporter.dropped("next_hop_is_self", sender=sender, peer=peer)
            return None
        return peer

    async def _hand_to_online_peer(self, parcel: Parcel, replayed: bool) -> bool:
        if self._transport is Transport.NATIVE and not replayed:
            self._race.remember(replace(parcel, entry=None))
            self._reporter.left_to_lnd(parcel.sender, parcel.peer, parcel.size)
            return False
        try:
            await self._send(parcel.peer, parcel.path_key, parcel.onion)
        except PeerOfflineError:
            # lnd's PEER_OFFLINE will tell the tracker; here the message is only kept.
            return await self._keep_if_allowed(parcel)
        except LndError as e:
            log.warning("forward to %s failed: %s", parcel.peer.hex(), e)
            return await self._keep_if_allowed(parcel)
        self._reporter.forwarded(parcel.sender, parcel.peer, parcel.size)
        return False

    async def _keep_if_allowed(self, parcel: Parcel) -> bool:
        if not await self._is_allowed(parcel.peer):
            self._reporter.dropped(
                "not_allowed", sender=parcel.sender, peer=parcel.peer, size=parcel.size
            )
            return False
        self._keep(parcel)
        return True

    async def peer_went_offline(self, peer: bytes) -> None:
        """Native transport: store what was left to lnd for ``peer`` just before it left."""
        offline_since = self._peers.offline_since(peer)
        if offline_since is None:
            return
        for parcel in self._race.take(peer, offline_since):
            if await self._keep_if_allowed(parcel):
                self._reporter.rescued(parcel.peer, parcel.size)


@dataclass(frozen=True)
class Arrival:
    """A message read from lnd (or left in the inbox by a previous daemon), to decide."""

    message: IncomingOnionMessage
    entry: str | None
    replayed: bool = False
    received_at: float | None = None


async def run_workers(ingest: Ingest, queue: asyncio.Queue[Arrival], workers: int) -> None:
    """Peels with ``workers`` messages in flight: the ECDHs are round trips to lnd."""

    async def work() -> None:
        while True:
            arrival = await queue.get()
            try:
                await ingest.handle(
                    arrival.message,
                    arrival.entry,
                    replayed=arrival.replayed,
                    received_at=arrival.received_at,
                )
            finally:
                queue.task_done()

    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(work())
