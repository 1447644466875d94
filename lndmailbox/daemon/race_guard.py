"""The native transport's race: what was left to lnd, kept in memory for a little while.

lnd publishes a message whether or not its own forward worked, and the daemon's view of
who is online can lag lnd's. So messages left to lnd are remembered for ``window``
seconds per next hop; if that hop's PEER_OFFLINE arrives inside the window, they are
stored after all (:meth:`Decider.peer_went_offline`). A duplicate is better than a loss.
"""

from __future__ import annotations

from collections import deque

from lndmailbox.clock import Clock
from lndmailbox.daemon.outgoing import OutgoingMessage


class RaceGuard:
    """Messages left to lnd in the last ``window`` seconds, per next hop (native only)."""

    def __init__(self, clock: Clock, window: float, *, per_peer: int = 256) -> None:
        self._clock = clock
        self._window = window
        self._per_peer = per_peer
        self._recent: dict[bytes, deque[tuple[float, OutgoingMessage]]] = {}
        self._remembered = 0

    def remember(self, message: OutgoingMessage) -> None:
        if self._window <= 0:
            return
        queue = self._recent.setdefault(message.peer, deque(maxlen=self._per_peer))
        queue.append((self._clock.monotonic(), message))
        self._forget_old(message.peer)
        self._remembered += 1
        if self._remembered % 1024 == 0:
            self.prune()

    def take(self, peer: bytes, offline_since: float) -> list[OutgoingMessage]:
        """Messages for ``peer`` left to lnd no earlier than ``window`` before it went offline."""
        queue = self._recent.pop(peer, None)
        if not queue:
            return []
        return [message for at, message in queue if at >= offline_since - self._window]

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
