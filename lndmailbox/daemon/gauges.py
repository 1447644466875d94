"""The queue gauges (messages, bytes, peers with mail), read from Redis when asked."""

from __future__ import annotations

import logging

from lndmailbox.daemon.metrics import Metrics
from lndmailbox.errors import StoreError
from lndmailbox.store import Queues

log = logging.getLogger(__name__)


class QueueGauges:
    """Sets ``queued_messages``, ``queued_bytes`` and ``peers_with_mail`` from the store's
    totals; a Redis that does not answer leaves the last values."""

    def __init__(self, queues: Queues, metrics: Metrics) -> None:
        self._queues = queues
        self._metrics = metrics

    async def update(self) -> None:
        try:
            peers, messages, size = await self._queues.totals()
        except StoreError as e:
            log.debug("queue gauges not updated: %s", e)
            return
        self._metrics.queued_messages.set(messages)
        self._metrics.queued_bytes.set(size)
        self._metrics.peers_with_mail.set(peers)
