"""A peeled message on its way to its next hop, and the sender that hands it to lnd."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lndmailbox.lnd import LndClient, Transport

if TYPE_CHECKING:
    from lndmailbox.daemon.interfaces import Sender


@dataclass(frozen=True)
class OutgoingMessage:
    """A message peeled for ``peer``: what the next hop must receive."""

    peer: bytes
    sender: bytes
    path_key: bytes
    onion: bytes
    received_at: float
    """When lnd handed it to the mailbox: its expiry counts from here."""
    entry: str | None = None
    """Its journal entry, to forget once the message is written (see journal_writer.py)."""

    @property
    def size(self) -> int:
        return len(self.path_key) + len(self.onion)


class LndSender:
    """Hands messages to lnd with the transport chosen at start (one per daemon).

    :meth:`send` raises PeerOfflineError when lnd says the peer is not connected, or
    another LndError.
    """

    def __init__(self, lnd: LndClient, transport: Transport) -> None:
        self._lnd = lnd
        self._transport = transport

    async def send(self, peer: bytes, path_key: bytes, onion: bytes) -> None:
        await self._lnd.send_onion_message(self._transport, peer, path_key, onion)


class LeaseGatedSender:
    """A sender that hands messages to lnd only while ``in_lease`` is set (the node lock's
    lease is known to be this leader's, :attr:`Term.in_lease`): once it may have run out
    a standby may lead, and two leaders must not both send. A send waits meanwhile."""

    def __init__(self, sender: Sender, in_lease: asyncio.Event) -> None:
        self._sender = sender
        self._in_lease = in_lease

    async def send(self, peer: bytes, path_key: bytes, onion: bytes) -> None:
        await self._in_lease.wait()
        await self._sender.send(peer, path_key, onion)
