"""The sweeper: expiry everywhere, the gauges, and a safety net under every drain.

Every ``interval`` seconds it removes the expired mail of every peer (each counted and
published as ``expired``), forgets what the race guard no longer needs, refreshes the
queue gauges, and drains every online peer: whatever trigger was missed, a peer that is
online gets its mail within one interval (a peer without mail costs one peek).
"""

from __future__ import annotations

import asyncio
import logging

from lndmailbox.clock import Clock
from lndmailbox.daemon.gauges import QueueGauges
from lndmailbox.daemon.interfaces import DeliveryTrigger
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.daemon.race_guard import RaceGuard
from lndmailbox.errors import StoreError
from lndmailbox.retry import wait_or_stop
from lndmailbox.store import Queues

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        *,
        queues: Queues,
        race: RaceGuard,
        reporter: Reporter,
        gauges: QueueGauges,
        peers: PeerTracker,
        delivery: DeliveryTrigger,
        clock: Clock,
        interval: float,
    ) -> None:
        self._queues = queues
        self._race = race
        self._reporter = reporter
        self._gauges = gauges
        self._peers = peers
        self._delivery = delivery
        self._clock = clock
        self._interval = interval

    async def run(self, stop: asyncio.Event) -> None:
        """Sweeps every ``interval`` seconds until ``stop`` is set."""
        while not await wait_or_stop(stop, self._interval):
            await self.sweep()

    async def sweep(self) -> None:
        self._race.prune()
        try:
            expired = await self._queues.sweep_expired(self._clock.now())
        except StoreError as e:
            log.debug("expired mail not swept: %s", e)  # the next sweep tries again
            expired = []
        for message in expired:
            self._reporter.expired(message.peer, message.id, message.size)
        await self._gauges.update()
        for peer in self._peers.online:
            self._delivery.kick(peer)
