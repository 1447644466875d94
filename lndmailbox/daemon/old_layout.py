"""At the lead, before anything is decided or delivered: the node's mailbox moves from the
old key layout (the releases before the node's hash tag) into the current one
(:class:`~lndmailbox.store.LayoutMigration`).

A leader that finds nothing to move pays one ``EXISTS``. While a daemon of the old
release still runs, it would go on writing the old layout (and leads the node by a lock
this release does not see), so the leader waits for it to stop, saying so once, and
moves the mailbox then; meanwhile its standby stream goes on journaling what lnd
publishes, so nothing read in the wait is lost. Redis being away is waited out the same
way.
"""

from __future__ import annotations

import asyncio
import logging

from lndmailbox.errors import MigrationRefusedError, StoreUnavailableError
from lndmailbox.retry import Backoff, Retry
from lndmailbox.store import Store

log = logging.getLogger(__name__)

LOOK_EVERY = Backoff(initial=0.25, maximum=1.0)
"""How often the leader looks again: an old release's daemon that stops (it hands its lock
over at once) is followed within a second."""


async def move_old_layout(store: Store, stop: asyncio.Event) -> bool:
    """Moves what the old layout holds of the node; one log line with what moved. False
    when ``stop`` came first (nothing is decided then)."""
    retry = Retry(
        "moving the mailbox from the old key layout",
        log,
        retry_on=lambda e: isinstance(e, StoreUnavailableError | MigrationRefusedError),
        backoff=LOOK_EVERY,
    )
    try:
        moved = await retry.call(store.layout.run, stop=stop)
    except (StoreUnavailableError, MigrationRefusedError):
        if stop.is_set():
            return False
        raise
    if moved:
        log.info("the mailbox is in this release's key layout: %s", moved.describe())
    return True
