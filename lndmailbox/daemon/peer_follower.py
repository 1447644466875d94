"""The peer follower: who is online, from lnd's peer events and ListPeers.

Rules that hold:

- Subscribe first, then read the current state (ListPeers): no change falls between.
- lnd does not replay peer events missed while the stream was down, so after every
  resubscription the online set is rebuilt from ListPeers, and every change found there
  is acted on as if its event had come.
- ``known`` is set once the first ListPeers is in: nothing is decided before the daemon
  knows who is online.
- A peer that comes online is drained; at start every online peer with mail is.
- A peer that goes offline (native transport) gets what was left to lnd for it inside the
  race window stored after all (:meth:`Decider.peer_went_offline`).
- A peer that goes offline (either transport, event or resync) gets its unconfirmed mail
  back in its queue (:meth:`Confirmations.peer_went_offline`), and so does one online on
  both sides of a resubscription, whose connection may not have lasted
  (:meth:`Confirmations.regained_sight`, after the resync's departures).
- A peer that connects or disconnects is told to the LSPS5 wake-ups, when on
  (``connections``): its notifications' cooldown ends.
- The confirmations, the peer tracker and the decider hear at once that the peer events
  broke (:meth:`Confirmations.lost_sight`, :meth:`PeerTracker.lost_sight`,
  :meth:`Decider.lost_sight`, the stream's ``on_break``), not only at the
  resubscription: lnd may be away for longer than a confirmation window or the race
  window, and what it took or forwarded just before may have been lost with the
  connections its restart dropped; and until the resync, no message is left to lnd on the
  word of a view that may be stale. What lnd forwarded in the race window before the
  break is stored at the resync (:meth:`Decider.regained_sight`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from lndmailbox.daemon.confirmations import Confirmations
from lndmailbox.daemon.decider import Decider
from lndmailbox.daemon.gauges import QueueGauges
from lndmailbox.daemon.interfaces import ConnectionWatcher, DeliveryTrigger
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.daemon.supervisor import run_until_stopped
from lndmailbox.errors import StoreError
from lndmailbox.lnd import LndClient, PeerEvent, Resubscribed, Transport
from lndmailbox.store import Queues

log = logging.getLogger(__name__)


class PeerFollower:
    def __init__(
        self,
        *,
        lnd: LndClient,
        transport: Transport,
        peers: PeerTracker,
        decider: Decider,
        delivery: DeliveryTrigger,
        confirmations: Confirmations,
        queues: Queues,
        gauges: QueueGauges,
        metrics: Metrics,
        known: asyncio.Event,
        connections: ConnectionWatcher | None = None,
    ) -> None:
        self._lnd = lnd
        self._transport = transport
        self._peers = peers
        self._decider = decider
        self._delivery = delivery
        self._confirmations = confirmations
        self._queues = queues
        self._gauges = gauges
        self._metrics = metrics
        self._known = known
        self._connections = connections

    async def run(self, stop: asyncio.Event) -> None:
        """Follows lnd's peer events until ``stop`` is set."""
        await run_until_stopped(stop, self._follow())

    async def _follow(self) -> None:
        events = self._lnd.peer_events(on_break=self._lost_sight)
        await events.wait_subscribed()
        await self._resync()
        self._known.set()
        await self._drain_peers_with_mail()
        async for event in events:
            if isinstance(event, Resubscribed):
                log.info("peer events resubscribed; resynchronising online peers")
                await self._resync()
                continue
            await self._apply(event)

    def _lost_sight(self) -> None:
        """lnd's peer events broke: until the resync nobody knows who stayed."""
        self._peers.lost_sight()
        self._confirmations.lost_sight()
        self._decider.lost_sight()

    async def _resync(self) -> None:
        """Rebuilds the online set from ListPeers, waiting while lnd is not ready (the
        client's one retry, which watches the daemon's stop)."""
        online = await self._lnd.list_peers(wait=True)
        came, went = self._peers.reset(online)
        self._metrics.online_peers.set(len(self._peers.online))
        for peer in went:
            self._confirmations.peer_went_offline(peer)
            self._decider.peer_went_offline(peer)
        self._connections_changed(came | went)
        self._decider.regained_sight()
        stayed = self._peers.online - came
        for peer in self._confirmations.regained_sight(stayed):
            self._delivery.kick(peer)
        for peer in came:
            self._delivery.kick(peer)

    async def _apply(self, event: PeerEvent) -> None:
        if not self._peers.mark(event.pubkey, event.online):
            return
        self._metrics.online_peers.set(len(self._peers.online))
        self._connections_changed((event.pubkey,))
        if event.online:
            self._delivery.kick(event.pubkey)
            return
        self._confirmations.peer_went_offline(event.pubkey)
        if self._transport is Transport.NATIVE:
            self._decider.peer_went_offline(event.pubkey)

    def _connections_changed(self, peers: Iterable[bytes]) -> None:
        if self._connections is not None:
            for peer in peers:
                self._connections.connection_changed(peer)

    async def _drain_peers_with_mail(self) -> None:
        try:
            with_mail = await self._queues.peers_with_mail()
        except StoreError as e:
            log.warning("could not list peers with mail at start: %s", e)
            return
        online = self._peers.online
        for peer in with_mail:
            if peer in online:
                self._delivery.kick(peer)
        await self._gauges.update()
