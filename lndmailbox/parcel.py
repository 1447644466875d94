"""The small values the daemon's parts hand each other."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Send = Callable[[bytes, bytes, bytes], Awaitable[None]]
"""Hands (peer, path_key, onion) to lnd; raises PeerOfflineError or another LndError."""


@dataclass(frozen=True)
class Parcel:
    """A message on its way to ``peer``: what the next hop must receive."""

    peer: bytes
    sender: bytes
    path_key: bytes
    onion: bytes
    received_at: float
    """When lnd handed it to the mailbox: its expiry counts from here."""
    entry: str | None = None
    """Its inbox entry, to forget once the parcel is written (see inbox.py)."""

    @property
    def size(self) -> int:
        return len(self.path_key) + len(self.onion)
