"""The decider: peel each incoming onion message once and decide what becomes of it.

The rules, in order, for a message that arrived from ``sender``:

1. It must peel (one layer, ECDH through lnd's signer). If not: drop, reason from the
   typed :class:`~lndmailbox.errors.OnionError`.
2. If we are its final hop: not the mailbox's business (drop ``final_hop``).
3. The next hop is named by node id, or by short_channel_id resolved through lnd's
   channels and aliases (unknown: drop ``unknown_scid``). A next hop equal to the sender
   (``loopback``) or to our own node (``next_hop_is_self``) is dropped.
4. Next hop online: the custom transport sends it now; the native transport leaves it to
   lnd, which forwards it itself, and remembers it for the race window
   (:mod:`~lndmailbox.daemon.race_guard`).
5. Next hop offline: stored if the peer is allowed (:class:`~lndmailbox.daemon.policy.Policy`),
   else dropped ``not_allowed``.

Every message is decided exactly once: its journal entry is forgotten when it is decided,
or by the store writer once it is stored; a message cut short by shutdown stays journaled
and the next daemon decides it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from lndmailbox.clock import Clock
from lndmailbox.daemon.decision_queue import Arrival, DecisionQueue
from lndmailbox.daemon.interfaces import DecisionLog, Keeper, Sender
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.outgoing import OutgoingMessage
from lndmailbox.daemon.peers import ChannelMap, PeerTracker
from lndmailbox.daemon.policy import Policy
from lndmailbox.daemon.race_guard import RaceGuard
from lndmailbox.errors import LndError, OnionError, PeerOfflineError
from lndmailbox.lnd import IncomingOnionMessage, Transport
from lndmailbox.onion import Forward, NodeKey, peel

log = logging.getLogger(__name__)


class Decider:
    """Decides what the decision queue holds, ``workers`` messages at a time (each peel
    is two ECDH round trips to lnd)."""

    def __init__(
        self,
        *,
        node_id: bytes,
        node_key: NodeKey,
        transport: Transport,
        peers: PeerTracker,
        channels: ChannelMap,
        policy: Policy,
        sender: Sender,
        keeper: Keeper,
        journal: DecisionLog,
        race: RaceGuard,
        reporter: Reporter,
        metrics: Metrics,
        clock: Clock,
        queue: DecisionQueue,
        workers: int,
    ) -> None:
        self._node_id = node_id
        self._node_key = node_key
        self._transport = transport
        self._peers = peers
        self._channels = channels
        self._policy = policy
        self._sender = sender
        self._keeper = keeper
        self._journal = journal
        self._race = race
        self._reporter = reporter
        self._metrics = metrics
        self._clock = clock
        self._queue = queue
        self._workers = workers

    async def run(self, stop: asyncio.Event) -> None:
        """Decides until ``stop`` is set and every message queued by then is decided."""
        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(self._work()) for _ in range(self._workers)]
            await stop.wait()
            await self._queue.join()
            for worker in workers:
                worker.cancel()

    async def _work(self) -> None:
        while True:
            arrival = await self._queue.get()
            try:
                await self.decide(arrival)
            finally:
                self._queue.task_done()

    async def decide(self, arrival: Arrival) -> None:
        """Decides one incoming message. Never raises for anything a peer can send.

        A message cut short (cancelled) stays journaled: the next daemon decides it.
        """
        kept = False
        try:
            kept = await self._decide(arrival)
        except asyncio.CancelledError:
            raise  # undecided: it stays journaled and the next daemon decides it
        except Exception:
            log.exception("unexpected error while deciding a message; it was dropped")
            self._reporter.dropped("internal_error", sender=arrival.message.peer)
        if not kept:
            self._journal.decided(arrival.entry)

    async def _decide(self, arrival: Arrival) -> bool:
        """True when the message went to the keeper (which then owns its journal entry)."""
        message = arrival.message
        result = await self._peel(message)
        if result is None:
            return False
        peer = await self._next_hop(result, message.peer)
        if peer is None:
            return False
        outgoing = OutgoingMessage(
            peer,
            message.peer,
            result.next_path_key,
            result.next_onion,
            arrival.received_at if arrival.received_at is not None else self._clock.now(),
            arrival.entry,
        )
        if self._peers.is_online(peer):
            return await self._hand_to_online_peer(outgoing, arrival.replayed)
        return await self._keep_if_allowed(outgoing)

    async def _peel(self, message: IncomingOnionMessage) -> Forward | None:
        """The next hop's part, or None (reported) when there is nothing to pass on."""
        sender = message.peer
        self._reporter.received(sender, len(message.path_key) + len(message.onion))
        started = time.perf_counter()
        try:
            result = await peel(message.path_key, message.onion, self._node_key)
        except OnionError as e:
            self._reporter.dropped(e.reason, sender=sender)
            return None
        except LndError as e:
            # Our signer failed us, not the peer: the message is lost to us, say so loudly.
            log.error("ECDH through lnd failed (%s); message from %s dropped", e, sender.hex())
            self._reporter.dropped("signer_unavailable", sender=sender)
            return None
        finally:
            self._metrics.peel_seconds.observe(time.perf_counter() - started)
        if not isinstance(result, Forward):
            self._reporter.dropped("final_hop", sender=sender)
            return None
        return result

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

    async def _hand_to_online_peer(self, message: OutgoingMessage, replayed: bool) -> bool:
        if self._transport is Transport.NATIVE and not replayed:
            self._race.remember(replace(message, entry=None))
            self._reporter.left_to_lnd(message.sender, message.peer, message.size)
            return False
        try:
            await self._sender.send(message.peer, message.path_key, message.onion)
        except PeerOfflineError:
            # lnd's PEER_OFFLINE will tell the tracker; here the message is only kept.
            return await self._keep_if_allowed(message)
        except LndError as e:
            log.warning("forward to %s failed: %s", message.peer.hex(), e)
            return await self._keep_if_allowed(message)
        self._reporter.forwarded(message.sender, message.peer, message.size)
        return False

    async def _keep_if_allowed(self, message: OutgoingMessage) -> bool:
        if not await self._policy.is_allowed(message.peer):
            self._reporter.dropped(
                "not_allowed", sender=message.sender, peer=message.peer, size=message.size
            )
            return False
        self._keeper.keep(message)
        return True

    async def peer_went_offline(self, peer: bytes) -> None:
        """Native transport: store what was left to lnd for ``peer`` just before it left."""
        offline_since = self._peers.offline_since(peer)
        if offline_since is None:
            return
        for message in self._race.take(peer, offline_since):
            if await self._keep_if_allowed(message):
                self._reporter.rescued(message.peer, message.size)
