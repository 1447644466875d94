"""The journal writer: a write-ahead journal of messages read from lnd and not yet decided.

lnd's streams carry no acknowledgement, so a message the daemon has read is the daemon's
alone: were the process to die before the message is stored, forwarded or dropped, it
would be gone. Each message is journaled in Redis (:class:`lndmailbox.store.Journal`) as
soon as it is read, and forgotten once it is decided; a daemon starting up decides again
whatever its predecessor left (:meth:`JournalWriter.left_over`, read before this daemon
journals anything of its own).

Writes are batched, a few milliseconds at a time, in one round trip with the entries to
forget: the decider never waits for the journal. A message decided before its batch went
out is never written at all. A crash may leave a decided message journaled, and deciding
it again gives at worst a duplicate (the store keeps one copy of a queued message).

While Redis is unreachable the journal is skipped: after a failure no journaling is tried
for a while (the :class:`~lndmailbox.retry.Backoff` of the outage, which is logged once),
and the decider runs on the store writer's memory buffer. A batch that failed stays to
be written with the next one: its messages are not journaled until Redis takes it. A
failed write may still have been applied (a reply lost to a timeout), so each of its
entries is deleted once decided, even when that is before it was written again.

Redis over ``maxmemory`` refuses the write (its script journals), and with it the
decisions, which would free memory: the inbox would never shrink, and its decided
messages would be decided again after a takeover. So when a write is refused for memory
the decisions still go out, deletes only (:meth:`~lndmailbox.store.Journal.forget`,
which Redis runs over ``maxmemory``), while the messages to journal wait for the next
try, as in an outage. Those decisions are not recorded as decided (that record would add
memory): a standby's copy of such a message journaled later would be decided again, a
duplicate, never a loss; and while Redis is over ``maxmemory`` it refuses the standbys'
journaling too. They are counted (``decided_over_memory``), with one WARNING when it
starts and one INFO when decisions are recorded again.

:attr:`JournalWriter.bytes` counts the messages journaled (or to be) and not yet
deleted from it, which is what the journal holds in Redis: the message reader turns
messages away rather than let it pass ``--max-in-flight-bytes``. A decided message's
bytes are freed once the write that deletes it is done, not when it is decided: Redis
holds it until then, and that write also journals (first, in one round trip that is not
a transaction) the messages read meanwhile, which the freed bytes let in; freed at the
decision, Redis would hold both at once, up to twice the cap. A daemon stopping while
Redis is away (or hung, its last write cancelled by the shutdown's budget) cannot
journal what is still to be written: those messages are counted as lost (``shutdown``),
with one line that says how many.

Entries are named by the message (:func:`~lndmailbox.store.journal.entry_for`), the same
in every daemon of the node, so a standby's copy of a message is this daemon's too. So:

- a decision is always written, even for a message this daemon never journaled (decided
  before its batch went out): a standby may have journaled it, and the decision takes its
  copy out of the inbox and records the message as decided;
- the same message read twice at once (a peer sending the same bytes again) is one entry,
  held until both copies are decided;
- what this daemon holds (:meth:`JournalWriter.holds`: read, or taken from the journal,
  and its decision not yet written) is never taken from the journal again, and a message
  taken from the journal (:meth:`JournalWriter.take`: left over by a daemon that died, or
  journaled by a standby only) is not decided again when lnd's stream brings it here
  late (:meth:`JournalWriter.taken_before`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from lndmailbox.clock import Clock, wait_either
from lndmailbox.daemon.decision_queue import Arrival
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.errors import StoreError, StoreUnavailableError
from lndmailbox.lnd import IncomingOnionMessage
from lndmailbox.retry import Backoff, Outage, wait_or_stop
from lndmailbox.store import Journal, JournalEntry, NewEntry, refused_for_memory
from lndmailbox.store.journal import DECIDED_FOR, entry_for

log = logging.getLogger(__name__)

_WRITE_INTERVAL = 0.002
_WRITE_BYTES = 1024 * 1024
"""Message bytes journaled in one round trip, at most (one message more when it is larger)."""


def _batch_end(to_write: list[NewEntry], start: int) -> int:
    """Where the write starting at ``start`` ends: ``_WRITE_BYTES`` of messages, at least one."""
    end, size = start, 0
    while end < len(to_write):
        size += to_write[end].size
        if size > _WRITE_BYTES and end > start:
            break
        end += 1
    return end


class JournalWriter:
    def __init__(
        self, journal: Journal, clock: Clock, reporter: Reporter, metrics: Metrics
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._reporter = reporter
        self._metrics = metrics
        self._to_write: dict[str, NewEntry] = {}
        self._sizes: dict[str, int] = {}
        self.bytes = 0
        """Bytes of the messages journaled here (or to be) and not deleted from Redis yet:
        undecided, or decided and their deletion not yet written."""
        self.peak_bytes = 0
        """The most :attr:`bytes` has been."""
        self._decided: list[str] = []
        self._deleting: dict[str, int] = {}
        """The sizes of the entries in ``_decided``: counted in :attr:`bytes` until the
        write that deletes them is done."""
        self._maybe_written: set[str] = set()
        """Entries of writes that failed: Redis may have applied them (a reply lost to a
        timeout), so once decided each is deleted, whether or not it is written again."""
        self._holders: dict[str, int] = {}
        """Per entry held, the copies of its message read and not decided yet."""
        self._unrecorded: set[str] = set()
        """Entries decided whose decision is not written yet."""
        self._taken: dict[str, float] = {}
        """Entries taken from the journal (:meth:`take`), with when (monotonic)."""
        self._paused_until = 0.0
        self._outage = Outage("journaling messages in Redis", log)
        self._unrecorded_decisions = Outage(
            "recording decisions (Redis is over maxmemory: decided entries are only deleted "
            "from the journal)",
            log,
        )
        self._backoff = Backoff()
        self._wakeup = asyncio.Event()

    def add(self, message: IncomingOnionMessage, now: float) -> str | None:
        """Journals ``message`` (in the next batch); None while journaling is paused."""
        if self._clock.monotonic() < self._paused_until:
            return None
        entry = entry_for(message.path_key, message.onion)
        if self._hold(entry, len(message.path_key) + len(message.onion)):
            self._to_write[entry] = NewEntry(
                entry,
                message.peer,
                message.path_key,
                message.onion,
                now,
                message.encrypted_recipient_data,
            )
            self._wakeup.set()
        return entry

    def _hold(self, entry: str, size: int) -> bool:
        """One more copy of ``entry`` held; True if it is the first (its bytes counted)."""
        copies = self._holders.get(entry, 0)
        self._holders[entry] = copies + 1
        if copies:
            return False
        self._sizes[entry] = size
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return True

    def take(self, entries: list[JournalEntry]) -> None:
        """Holds ``entries``, read from the journal to be decided here (what a daemon that
        died left, what only a standby journaled): their bytes count (Redis holds them),
        each is deleted once decided, and lnd's stream bringing one here later is not
        decided again (:meth:`taken_before`)."""
        now = self._clock.monotonic()
        for item in entries:
            if self._hold(item.entry, len(item.path_key) + len(item.onion)):
                self._maybe_written.add(item.entry)
            self._taken.pop(item.entry, None)  # kept in the order taken, oldest first
            self._taken[item.entry] = now

    def holds(self, entry: str) -> bool:
        """Whether ``entry`` is this daemon's: read or taken, and its decision not written."""
        return entry in self._holders or entry in self._unrecorded

    def taken_before(self, message: IncomingOnionMessage) -> bool:
        """Whether ``message`` was taken from the journal (:meth:`take`) in the last
        :data:`~lndmailbox.store.journal.DECIDED_FOR` seconds: it is decided, or being
        decided, here already."""
        if not self._taken:
            return False
        horizon = self._clock.monotonic() - DECIDED_FOR
        while self._taken and next(iter(self._taken.values())) < horizon:
            del self._taken[next(iter(self._taken))]
        return entry_for(message.path_key, message.onion) in self._taken

    def decided(self, entry: str | None) -> None:
        if entry is None:
            return
        copies = self._holders.pop(entry, 0)
        if copies > 1:
            self._holders[entry] = copies - 1  # another copy is still being decided
            return
        size = self._sizes.pop(entry, 0)
        unwritten = self._to_write.pop(entry, None) is not None
        # Written or not, the decision is: a standby may have journaled the message, and
        # its copy leaves the inbox with the decision, recorded so it never comes back.
        self._decided.append(entry)
        self._unrecorded.add(entry)
        self._wakeup.set()
        if not unwritten or entry in self._maybe_written:
            # In Redis (or maybe, or about to be: its write is on the way): its bytes are
            # freed once the write that deletes it is done.
            self._maybe_written.discard(entry)
            self._deleting[entry] = self._deleting.get(entry, 0) + size
        else:
            self.bytes -= size  # never written, and now never will be

    def _deleted(self, entries: list[str]) -> None:
        """``entries`` are gone from Redis: their bytes are free."""
        for entry in entries:
            self.bytes -= self._deleting.pop(entry, 0)
            if entry not in self._holders:  # (read again meanwhile: held anew)
                self._unrecorded.discard(entry)

    async def left_over(self, *, ttl: float) -> list[Arrival]:
        """What a previous daemon read from lnd and did not decide, still within ``ttl``."""
        try:
            pending = await self._journal.pending()
        except StoreError as e:
            log.warning("could not read the journal left by a previous daemon: %s", e)
            return []
        return self.arrivals(pending, ttl=ttl)

    def arrivals(self, items: list[JournalEntry], *, ttl: float) -> list[Arrival]:
        """Takes ``items`` from the journal (:meth:`take`) as messages to decide, replayed:
        lnd may not have forwarded them, so the decider does. One older than ``ttl`` is
        decided at once, expired while nobody held it."""
        self.take(items)
        now = self._clock.now()
        arrivals = []
        for item in items:
            if item.received_at + ttl <= now:
                self.decided(item.entry)
                continue
            message = IncomingOnionMessage(
                item.sender, item.path_key, item.onion, item.encrypted_recipient_data
            )
            arrivals.append(
                Arrival(message, item.entry, replayed=True, received_at=item.received_at)
            )
        return arrivals

    async def flush(self) -> None:
        """Journals what was read and forgets what was decided, in one round trip per
        ``_WRITE_BYTES`` of messages (the first also forgets): neither Redis nor the
        daemon holds more than that of one write beside the journal itself. Refused for
        memory, the decisions still go out, deletes only."""
        if not self._to_write and not self._decided:
            return  # nothing asked of Redis: nothing learnt of it either
        try:
            await self._write()
        except StoreUnavailableError as e:
            if refused_for_memory(e):
                with contextlib.suppress(StoreError):
                    await self._forget_decided(e)
            raise
        self._unrecorded_decisions.recovered()

    async def _forget_decided(self, refusal: StoreError) -> None:
        """Deletes the decided entries from the journal, unrecorded: Redis refused the
        whole write (``refusal``) for memory."""
        decided, self._decided = self._decided, []
        if not decided:
            return
        try:
            deleted = await self._journal.forget(decided)
        except BaseException:
            self._decided[:0] = decided
            raise
        self._deleted(decided)
        self._metrics.decided_over_memory.inc(deleted)
        self._unrecorded_decisions.failed(refusal)

    async def _write(self) -> None:
        to_write = list(self._to_write.values())
        self._to_write = {}
        decided, self._decided = self._decided, []
        start = 0
        try:
            while True:
                end = _batch_end(to_write, start)
                await self._journal.write(to_write[start:end], decided)
                self._deleted(decided)
                self._maybe_written.difference_update(m.entry for m in to_write[start:end])
                decided, start = [], end
                if start >= len(to_write):
                    break
        except BaseException as e:
            # Whatever ended it (a Redis error, or the shutdown cancelling a write Redis
            # does not answer), what was not written is put back: written with the next
            # batch, or counted lost at shutdown. The batch on its way may have been
            # applied: its entries are deleted once decided.
            self._decided[:0] = decided
            self._maybe_written.update(
                m.entry for m in to_write[start : _batch_end(to_write, start)]
            )
            # The ones decided meanwhile are gone from _sizes and need no writing.
            self._to_write = {
                m.entry: m
                for m in (*to_write[start:], *self._to_write.values())
                if m.entry in self._sizes
            }
            self._wakeup.set()
            if isinstance(e, StoreError):
                self._outage.failed(e)
                if isinstance(e, StoreUnavailableError):
                    # Its messages go on, held in memory only until a later batch goes
                    # through.
                    pause = self._backoff.delay(self._outage.failures)
                    self._paused_until = self._clock.monotonic() + pause
            raise
        self._outage.recovered()

    async def run(self, stop: asyncio.Event) -> None:
        """Writes batches until ``stop`` is set, then once more. Cancelled (the shutdown's
        budget ran out, Redis hung), what was still to be journaled is counted lost."""
        try:
            await self._run(stop)
        except asyncio.CancelledError:
            self._lose_unwritten()
            raise

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await wait_either(self._wakeup, stop)
            self._wakeup.clear()
            await wait_or_stop(stop, _WRITE_INTERVAL)  # gather a batch
            try:
                await self.flush()
            except StoreError:
                await wait_or_stop(stop, self._backoff.delay(self._outage.failures))
        try:
            await self.flush()
        except StoreError:
            log.warning(
                "could not write the journal at shutdown; what it still holds is decided "
                "again at start"
            )
            self._lose_unwritten()

    def _lose_unwritten(self) -> None:
        """At shutdown with Redis away: what was still to be journaled dies with us, and
        what was decided and is still journaled is left to the next daemon to decide
        again; this one holds nothing any more."""
        self._deleted(self._decided)
        self._decided = []
        self._unrecorded.clear()
        if not self._to_write:
            return
        log.error(
            "stopping with Redis away: %d messages read from lnd and not decided were never "
            "journaled; they are lost",
            len(self._to_write),
        )
        for entry in self._to_write:
            size = self._sizes.pop(entry, 0)
            self._holders.pop(entry, None)
            self.bytes -= size
            self._reporter.lost(b"", size, "shutdown")
        self._to_write = {}
