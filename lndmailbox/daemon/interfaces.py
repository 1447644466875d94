"""The small interfaces the daemon's parts know one another by.

Each names the one method a part needs of another, and which class provides it, so that
"go to definition" leads from a caller to the rule it relies on. Tests hand in stand-ins.
"""

from __future__ import annotations

from typing import Protocol

from lndmailbox.daemon.outgoing import OutgoingMessage


class Sender(Protocol):
    """Hands one message to lnd (:class:`~lndmailbox.daemon.outgoing.LndSender`)."""

    async def send(self, peer: bytes, path_key: bytes, onion: bytes) -> None:
        """Raises PeerOfflineError when the peer is not connected, or another LndError."""
        ...


class Keeper(Protocol):
    """Takes a message to store (:class:`~lndmailbox.daemon.store_writer.StoreWriter`)."""

    def keep(self, message: OutgoingMessage) -> None:
        """Queues ``message`` for the store; never blocks. Its journal entry is then the
        keeper's to forget."""
        ...


class DecisionLog(Protocol):
    """Forgets decided messages (:class:`~lndmailbox.daemon.journal_writer.JournalWriter`)."""

    def decided(self, entry: str | None) -> None:
        """The message journaled as ``entry`` is decided (None: it was not journaled)."""
        ...


class DeliveryTrigger(Protocol):
    """Starts a drain (:class:`~lndmailbox.daemon.deliverer.Deliverer`)."""

    def kick(self, peer: bytes) -> None:
        """Drains ``peer``'s mail now if it is online; never blocks."""
        ...


class Hearing(Protocol):
    """Told of every message a peer sends (:class:`~lndmailbox.daemon.confirmations.Confirmations`)."""

    def heard_from(self, peer: bytes, at: float | None = None) -> None:
        """``peer`` sent an onion message that lnd published no earlier than ``at``
        (monotonic); never blocks."""
        ...


class MessageSigner(Protocol):
    """Signs with the node key (:meth:`~lndmailbox.lnd.LndClient.sign_message`)."""

    async def sign_message(self, message: bytes) -> str:
        """lnd's z-base-32 signature of ``message``; raises LndError."""
        ...


class MailWaker(Protocol):
    """Wakes a client whose mail waits (:class:`~lndmailbox.daemon.wakeups.Wakeups`)."""

    def mail_stored(self, peer: bytes) -> None:
        """Mail is stored for ``peer``; never blocks."""
        ...


class ConnectionWatcher(Protocol):
    """Told of peers' connections (:class:`~lndmailbox.daemon.wakeups.Wakeups`)."""

    def connection_changed(self, peer: bytes) -> None:
        """``peer`` connected or disconnected; never blocks."""
        ...
