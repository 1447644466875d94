"""A mailbox in the old key layout (the releases before the node's hash tag) moves into the
current one (:class:`~lndmailbox.store.LayoutMigration`) when a daemon of this release
takes the lead, before it decides or delivers anything.

A daemon of the old release that still runs would go on writing the old layout, and it
leads the node by a lock this release does not see. So while one runs, a daemon of this
release stands by (:func:`old_release_gone`, before it tries for the lock): it journals
what lnd publishes like any standby, its health says standby, and it takes the lead
within a second of the old daemon's stop (which hands its lock over at once). Meanwhile
it journals into the old release's ``inbox`` and ``decided`` (:class:`UpgradeJournal`):
the old leader's inbox look takes what only it read, and a message the old leader decided
is not journaled again, exactly as for two daemons of the old release. What is left there
moves with the rest of the old layout. (Journaled in this release's ``inbox``, the new
leader would decide again every message the old one had already forwarded or delivered.)
The move itself refuses too while one runs (one that started in between): the new leader
then waits, saying so once. With no old release, each look and a leader's move cost two
commands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from lndmailbox.errors import MigrationRefusedError, StoreUnavailableError
from lndmailbox.retry import Backoff, Retry, wait_or_stop
from lndmailbox.store import NewEntry, Store

log = logging.getLogger(__name__)

LOOK_EVERY = 0.5
"""Seconds between looks at whether a daemon of the old release still runs."""
LOOK_WITHIN = 1.0
"""Seconds one look may take (two small commands) before Redis is left to the node lock,
whose own connection times out in half a second: a hung Redis must not hold up the try
for the lead by the store's 30 s socket timeout."""


class UpgradeJournal:
    """The journal a standby writes: the old release's while a daemon of it runs for the
    node (:attr:`beside_old_release`), else this release's."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.beside_old_release = False

    async def look(self) -> str | None:
        """Whether a daemon of the old release runs (what shows it, else None), noted for
        the journal's next writes. Redis away or slow counts as none: the node lock then
        waits it out, and the migration refuses while the old release runs."""
        try:
            async with asyncio.timeout(LOOK_WITHIN):
                why = await self._store.layout.old_release_runs()
        except (StoreUnavailableError, TimeoutError):
            why = None
        self.beside_old_release = why is not None
        return why

    async def write(self, added: Sequence[NewEntry] = ()) -> int:
        journal = self._store.old_journal if self.beside_old_release else self._store.journal
        return await journal.write(added)


async def old_release_gone(journal: UpgradeJournal, stop: asyncio.Event) -> bool:
    """Waits while a daemon of the old release runs for the node (saying so once), the
    standby journaling into the old layout meanwhile; False when ``stop`` came first.
    Redis away is left to the node lock, which waits it out."""
    said = False
    while not stop.is_set():
        why = await journal.look()
        if why is None:
            if said:
                log.info("the old release's daemons are gone: trying for the lead")
            return True
        if not said:
            log.warning("standing by while %s; it leads until it stops", why)
            said = True
        if await wait_or_stop(stop, LOOK_EVERY):
            break
    return False


async def move_old_layout(store: Store, stop: asyncio.Event) -> bool:
    """Moves what the old layout holds of the node; one log line with what moved. False
    when ``stop`` came first (nothing is decided then)."""
    retry = Retry(
        "moving the mailbox from the old key layout",
        log,
        retry_on=lambda e: isinstance(e, StoreUnavailableError | MigrationRefusedError),
        backoff=Backoff(initial=LOOK_EVERY / 2, maximum=2 * LOOK_EVERY),
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
