"""The inbox: a write-ahead journal of messages read from lnd and not yet decided.

lnd's streams carry no acknowledgement, so a message the daemon has read is the daemon's
alone: were the process to die before the message is stored, forwarded or dropped, it
would be gone. Each message is journaled in Redis as soon as it is read, and forgotten
once it is decided; a daemon starting up decides again whatever its predecessor left.
Forgetting is batched: a crash may leave a decided message journaled, and deciding it
again gives at worst a duplicate (the store keeps one copy of a queued message).
"""

from __future__ import annotations

import asyncio
import logging

from lndmailbox.clock import sleep_or_stop
from lndmailbox.errors import StoreError
from lndmailbox.lnd import IncomingOnionMessage
from lndmailbox.store import Store

log = logging.getLogger("lndmailbox.mailbox")

_FLUSH_INTERVAL = 0.05


class Inbox:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._decided: list[str] = []

    async def add(self, message: IncomingOnionMessage) -> str | None:
        """Journals ``message``; None when Redis is away (the message goes on unjournaled)."""
        try:
            return await self._store.inbox_add(message.peer, message.path_key, message.onion)
        except StoreError:
            return None

    def decided(self, entry: str | None) -> None:
        if entry is not None:
            self._decided.append(entry)

    async def left_over(self) -> list[tuple[str, IncomingOnionMessage]]:
        """What a previous daemon read from lnd and did not get to decide."""
        try:
            pending = await self._store.inbox_pending()
        except StoreError as e:
            log.warning("could not read the inbox left by a previous daemon: %s", e)
            return []
        return [
            (entry, IncomingOnionMessage(peer=sender, path_key=path_key, onion=onion))
            for entry, sender, path_key, onion in pending
        ]

    async def flush(self) -> None:
        decided, self._decided = self._decided, []
        try:
            await self._store.inbox_done(decided)
        except StoreError:
            self._decided[:0] = decided
            raise

    async def run(self, stop: asyncio.Event) -> None:
        while not await sleep_or_stop(stop, _FLUSH_INTERVAL):
            try:
                await self.flush()
            except StoreError:
                await sleep_or_stop(stop, 1.0)
        try:
            await self.flush()
        except StoreError:
            log.warning("could not clear the inbox at shutdown; it is decided again at start")
