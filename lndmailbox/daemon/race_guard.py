"""The native transport's race: when a message may be left to lnd, and what was left to
lnd, kept in memory for a little while.

lnd publishes a message whether or not its own forward worked, and the daemon's view of
who is online can lag lnd's, either way:

- the next hop came back only just now (:meth:`RaceGuard.lnd_could_forward`): lnd may
  have tried while it was away, milliseconds before. A message is left to lnd only if
  its next hop has been online since ``window`` seconds before the earliest moment lnd
  may have tried to forward it (the reader's ``not_before``, which already allows for
  the stream's lag); otherwise the decider keeps it and the deliverer sends it at once
  (rescued, ``came_online``): a duplicate whenever lnd's own forward worked, which the
  daemon cannot tell.
- the next hop went away just now: messages left to lnd are remembered for ``window``
  seconds per next hop; if that hop's PEER_OFFLINE arrives inside the window, they are
  stored after all (:meth:`Decider.peer_went_offline`; rescued, ``went_offline``).
- lnd's peer events broke (an lnd restart drops every connection, and its peers may be
  back before the daemon hears of anything): everything left to lnd in the ``window``
  before the break is at risk whoever it was for, taken at once
  (:meth:`RaceGuard.take_all`) and stored once the daemon knows who is online again
  (:meth:`Decider.regained_sight`; rescued, ``went_offline``). However long lnd stays
  away, what it took just before is not forgotten meanwhile, in memory: a daemon that
  stops first counts it lost (``shutdown``).

``window`` (``--race-window``) covers what the stamps cannot see: the skew between lnd's
two streams, and lnd's own sending. A duplicate is better than a loss.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lndmailbox.clock import Clock
from lndmailbox.lnd import IncomingOnionMessage
from lndmailbox.onion import Forward, NextHop


@dataclass(frozen=True)
class LeftToLnd:
    """A message left to lnd for ``peer``, as lnd handed it over: it is peeled only if it
    has to be stored after all (unless it was peeled already: ``forward``)."""

    peer: bytes
    hop: NextHop
    """Its next hop as the decision read it (``peer`` is its node)."""
    message: IncomingOnionMessage
    received_at: float
    """When lnd handed it to the mailbox (wall clock): a stored message's expiry counts
    from here."""
    forward: Forward | None = None

    @property
    def size(self) -> int:
        return len(self.message.path_key) + len(self.message.onion)


class RaceGuard:
    """Messages left to lnd in the last ``window`` seconds, per next hop (native only)."""

    def __init__(self, clock: Clock, window: float, *, per_peer: int = 256) -> None:
        self._clock = clock
        self._window = window
        self._per_peer = per_peer
        self._recent: dict[bytes, deque[tuple[float, LeftToLnd]]] = {}
        self._remembered = 0

    @property
    def window(self) -> float:
        return self._window

    def lnd_could_forward(self, online_since: float | None, not_before: float | None) -> bool:
        """Whether a message lnd may have tried to forward from ``not_before`` on (None:
        not known) found its next hop there: the hop has been online without a break
        (as far as lnd's peer events tell) since ``window`` seconds before that."""
        if online_since is None or not_before is None:
            return False
        return online_since <= not_before - self._window

    def remember(self, message: LeftToLnd) -> None:
        if self._window <= 0:
            return
        queue = self._recent.setdefault(message.peer, deque(maxlen=self._per_peer))
        queue.append((self._clock.monotonic(), message))
        self._forget_old(message.peer)
        self._remembered += 1
        if self._remembered % 1024 == 0:
            self.prune()

    def take(self, peer: bytes, offline_since: float) -> list[LeftToLnd]:
        """Messages for ``peer`` left to lnd no earlier than ``window`` before it went offline."""
        queue = self._recent.pop(peer, None)
        if not queue:
            return []
        return [message for at, message in queue if at >= offline_since - self._window]

    def take_all(self) -> list[LeftToLnd]:
        """Every message left to lnd in the last ``window`` seconds, whoever it was for."""
        now = self._clock.monotonic()
        taken = [m for peer in list(self._recent) for m in self.take(peer, now)]
        self._recent.clear()
        return taken

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
