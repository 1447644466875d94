"""The request server: serves ``mailboxctl deliver``.

``mailboxctl deliver PEER`` leaves a delivery request in Redis; the server waits for
requests and starts a drain of each peer named (a peer that is not online is passed
over, as for any drain). While Redis is unreachable it waits with backoff, saying so once.
"""

from __future__ import annotations

import asyncio
import logging

from lndmailbox.daemon.interfaces import DeliveryTrigger
from lndmailbox.errors import StoreError
from lndmailbox.retry import Retry
from lndmailbox.store import Control

log = logging.getLogger(__name__)

_WAIT = 1.0
"""Seconds one wait for requests lasts in Redis (it ends early when one arrives)."""


class RequestServer:
    def __init__(self, control: Control, delivery: DeliveryTrigger) -> None:
        self._control = control
        self._delivery = delivery
        self._retry = Retry(
            "reading delivery requests from Redis",
            log,
            retry_on=lambda e: isinstance(e, StoreError),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serves requests until ``stop`` is set."""
        while not stop.is_set():
            try:
                requested = await self._retry.call(
                    lambda: self._control.wait_delivery_requests(timeout=_WAIT), stop=stop
                )
            except StoreError:
                if stop.is_set():
                    return
                raise
            for peer in requested:
                self._delivery.kick(peer)
