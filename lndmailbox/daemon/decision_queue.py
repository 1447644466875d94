"""The decision queue: messages read from lnd, waiting for the decider.

The message reader puts every message it reads here (after journaling it), and what a
previous daemon left undecided in the journal goes first. The queue is bounded, so a
decider that falls behind holds up reading from lnd instead of filling memory.
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


class DecisionQueue(asyncio.Queue[Arrival]):
    """The bounded queue from the message reader to the decider."""
