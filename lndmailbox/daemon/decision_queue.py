"""The decision queue: messages read from lnd, waiting for the decider.

The message reader puts every message it reads here (after journaling it), and what a
previous daemon left undecided in the journal goes first. The queue is bounded twice:

- in messages (``maxsize``): a decider that falls behind holds up reading from lnd;
- in bytes (:attr:`DecisionQueue.bytes`, which the reader checks against
  ``--max-in-flight-bytes`` before it journals a message): a message counts from its
  ``put`` until the decider's ``task_done`` for it, so the bytes waiting and the bytes in
  the deciders' hands are counted together.

Each decider worker takes a message with ``get`` and says ``task_done`` in the same task
(``Decider._work``), so the queue knows which message each worker holds; one whose worker
was cancelled before deciding it (the shutdown's budget ran out) is kept aside with the
messages never taken, for the shutdown to account for (:meth:`DecisionQueue.undecided`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from lndmailbox.lnd import IncomingOnionMessage


@dataclass(frozen=True)
class Arrival:
    """A message read from lnd (or left in the journal by a previous daemon), to decide."""

    message: IncomingOnionMessage
    entry: str | None
    """Its journal entry (None: not journaled, Redis was away)."""
    replayed: bool = False
    """Left by a previous daemon: lnd may not have forwarded it, so the decider does."""
    received_at: float | None = None
    """Wall-clock time the reader took it from lnd (its expiry counts from here)."""
    read_at: float | None = None
    """``clock.monotonic()`` when the reader took it from lnd's stream."""
    not_before: float | None = None
    """``clock.monotonic()``: the earliest moment lnd may have tried to forward it (the
    stream's :class:`~lndmailbox.lnd.streams.QuietMark`); None: not known, which the
    native transport's decision takes as "any time"."""

    @property
    def size(self) -> int:
        """The bytes the in-flight cap counts: path key and onion."""
        return len(self.message.path_key) + len(self.message.onion)


class DecisionQueue(asyncio.Queue[Arrival]):
    """The bounded queue from the message reader to the decider."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.bytes = 0
        """Bytes of the messages waiting here or in a decider's hands."""
        self.peak_bytes = 0
        """The most :attr:`bytes` has been."""
        self._in_hand: dict[asyncio.Task[object], Arrival] = {}
        self._cut_short: list[Arrival] = []

    def put_nowait(self, item: Arrival) -> None:
        super().put_nowait(item)  # put() ends here too, once there is room
        self.bytes += item.size
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def get_nowait(self) -> Arrival:
        item = super().get_nowait()  # get() ends here too
        task = asyncio.current_task()
        if task is None:
            self.bytes -= item.size
        else:
            self._in_hand[task] = item
        return item

    def task_done(self) -> None:
        task = asyncio.current_task()
        item = self._in_hand.pop(task, None) if task is not None else None
        if item is not None:
            self.bytes -= item.size
            if task is not None and task.cancelling():
                self._cut_short.append(item)  # its worker was stopped before it decided
        super().task_done()

    def leave_undecided(self, item: Arrival) -> None:
        """``item``, taken, is left undecided (lnd refused the macaroon): the shutdown
        accounts for it with the rest (:meth:`undecided`)."""
        self._cut_short.append(item)

    def undecided(self) -> list[Arrival]:
        """Takes every message never taken, every one whose worker was cancelled before
        deciding it, and every one left undecided: what the decider left when it stopped."""
        left = self._cut_short
        self._cut_short = []
        while not self.empty():
            item = super().get_nowait()
            self.bytes -= item.size
            left.append(item)
            super().task_done()
        return left
