"""The deliverer: drains a returning peer's mail, oldest first, through lnd.

Rules that hold:

- A message leaves the queue only after lnd accepted it, and then only for the peer's
  unconfirmed list, still in Redis (:mod:`lndmailbox.daemon.confirmations` decides when it
  is confirmed and deleted, or goes back). If the daemon dies between lnd's answer and the
  move, the message is sent again after restart: a duplicate, never a loss.
- A drain holds its peer (``Confirmations.delivering``): unconfirmed mail due back in the
  queue goes back first, so it goes out again before the rest, in its order.
- If lnd says the peer is not connected, delivery to that peer stops and the rest waits
  for its next PEER_ONLINE.
- One drain per peer at a time, so a peer's messages go out in order; a drain asked for
  while one runs makes that one go round again, so nothing stored meanwhile is missed.
- One slow or flapping peer holds up nobody else: every peer has its own task.
- A message lnd refuses outright (not a connection problem) is tried again later, up to
  ``max_attempts`` times, then dropped as ``rejected_by_lnd`` so it cannot block the queue
  behind it for ever. A macaroon that may not send stops the daemon: no attempt is used up.
- At most ``max_drains`` peers are drained at once (after an lnd restart thousands of
  peers may come back together).
- A Redis outage pauses the drains, which retry with backoff; an outage of Redis or of
  lnd is logged once when it starts and once when it ends, not once per retry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lndmailbox.clock import Clock
from lndmailbox.daemon.confirmations import Confirmations, Drain
from lndmailbox.daemon.interfaces import Sender
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.peers import PeerTracker
from lndmailbox.errors import (
    LndCredentialsError,
    LndError,
    PeerOfflineError,
    StoreError,
    StoreUnavailableError,
)
from lndmailbox.retry import Outage, Retry
from lndmailbox.store import Queues, StoredMessage
from lndmailbox.store.records import ms

log = logging.getLogger(__name__)

_BATCH = 64
_RETRY_AFTER = 5.0
"""Seconds before a drain that lnd refused goes round again (not a backoff: a refused
message uses up one of its ``max_attempts`` each time)."""
_REMOVE_EVERY = 16
_UNSUPPORTED = ("UNIMPLEMENTED",)


def _unavailable(error: BaseException) -> bool:
    return isinstance(error, StoreUnavailableError)


class _PeerError(Exception):
    """lnd's answer to a delivery, with the peer it was for, as the outage log tells it."""


def _log_left_in_redis(messages: list[StoredMessage]) -> None:
    log.warning("%d delivered messages still queued: they will be sent again", len(messages))


class _Removals:
    """What lnd accepted during one drain, taken out of the queue (into the unconfirmed
    list) in the background a group of ``_REMOVE_EVERY`` at a time. Each group goes only
    after the one before it, so the delivered events list the messages in the order lnd
    took them, and sending waits when two groups are already on their way, so a crash
    re-sends at most three groups.

    ``remove`` takes a group out of the queue; it returns False when it gave up (Redis
    gone while the daemon stops), and then the groups after it do not try: at shutdown
    every try could take a connection timeout."""

    def __init__(self, remove: Callable[[list[StoredMessage]], Awaitable[bool]]) -> None:
        self._remove = remove
        self._group: list[StoredMessage] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._gave_up = False
        self.accepted = 0
        """Messages lnd accepted: removed, on their way out, or left for the next drain."""

    async def add(self, message: StoredMessage) -> None:
        self.accepted += 1
        self._group.append(message)
        if len(self._group) < _REMOVE_EVERY:
            return
        if len(self._tasks) >= 2:
            await asyncio.wait([self._tasks[-2]])
        self._start_group()

    def _start_group(self) -> None:
        previous = self._tasks[-1] if self._tasks else None
        self._tasks.append(asyncio.create_task(self._remove_after(previous, self._group)))
        self._group = []

    async def _remove_after(
        self, previous: asyncio.Task[None] | None, group: list[StoredMessage]
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its failure is settle()'s to report, not ours
        if self._gave_up:
            _log_left_in_redis(group)
        elif not await self._remove(group):
            self._gave_up = True

    async def settle(self) -> list[BaseException]:
        """Removes what is left and waits for every group, even after one failed: a drain
        must not end with messages lnd took still on their way out of Redis (the next
        drain would send them again). Returns the failures."""
        if self._group:
            self._start_group()
        outcomes = await asyncio.gather(*self._tasks, return_exceptions=True)
        return [e for e in outcomes if isinstance(e, BaseException)]


class Deliverer:
    def __init__(
        self,
        *,
        queues: Queues,
        sender: Sender,
        peers: PeerTracker,
        confirmations: Confirmations,
        reporter: Reporter,
        clock: Clock,
        max_attempts: int = 5,
        max_drains: int = 32,
    ) -> None:
        self._queues = queues
        self._sender = sender
        self._peers = peers
        self._confirmations = confirmations
        self._reporter = reporter
        self._clock = clock
        self._max_attempts = max_attempts
        self._running: dict[bytes, asyncio.Task[None]] = {}
        self._again: set[bytes] = set()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(max_drains)
        self._read_retry = Retry("reading mail from Redis for delivery", log, retry_on=_unavailable)
        self._removal_retry = Retry(
            "moving delivered mail to its unconfirmed list", log, retry_on=_unavailable
        )
        self._lnd_outage = Outage("delivering through lnd", log)
        self.fatal: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Fails with an error that no retry can mend (a macaroon that may not send)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Waits for ``stop``; raises first if a drain met an error no retry can mend."""
        stopped = asyncio.ensure_future(stop.wait())
        waiters: list[asyncio.Future[Any]] = [stopped, self.fatal]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if self.fatal.done():
            self.fatal.result()

    def kick(self, peer: bytes) -> None:
        """Drains ``peer``'s mail now if it is online (or goes round again if draining)."""
        if self._stopping.is_set() or not self._peers.is_online(peer):
            return
        if peer in self._running:
            self._again.add(peer)
            return
        self._running[peer] = asyncio.create_task(
            self._drain_until_settled(peer), name=f"deliver-{peer.hex()}"
        )

    def _retry_later(self, peer: bytes) -> None:
        if not self._stopping.is_set():
            asyncio.get_running_loop().call_later(_RETRY_AFTER, self.kick, peer)

    async def close(self, within: float = 10.0) -> None:
        """Lets running drains finish the message in hand, then stops them."""
        self._stopping.set()
        tasks = list(self._running.values())
        if tasks:
            await asyncio.wait(tasks, timeout=within)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain_until_settled(self, peer: bytes) -> None:
        try:
            async with self._slots:
                while True:
                    self._again.discard(peer)
                    await self._drain(peer)
                    if peer not in self._again or self._stopping.is_set():
                        return
        except LndCredentialsError as e:
            if not self.fatal.done():
                self.fatal.set_exception(e)
        except Exception:
            log.exception("delivery to %s failed unexpectedly; retrying later", peer.hex())
            self._retry_later(peer)
        finally:
            # Synchronously, with no await since the last look at _again: a kick that comes
            # after this starts a new drain instead of being left to a finished one.
            if self._running.get(peer) is asyncio.current_task():
                del self._running[peer]

    async def _drain(self, peer: bytes) -> None:
        """Sends the peer's mail in order until the queue is empty, the peer is gone, lnd
        refuses or the daemon stops; then waits until the queue has let go of all lnd
        took. Holds the peer meanwhile (its unconfirmed mail due back goes back first)."""
        async with self._confirmations.delivering(peer) as drain:
            in_hand: set[str] = set()
            move = functools.partial(self._move_delivered, peer=peer, in_hand=in_hand, drain=drain)
            removals = _Removals(move)
            started = self._clock.monotonic()
            try:
                ended = await self._send_queue(peer, drain, in_hand, removals)
            except BaseException:
                # Also when sending raised or was cancelled: lnd took what it accepted. The
                # sending error goes up; the removals' failures are only logged.
                await self._settle(peer, removals, started, "interrupted", raise_failure=False)
                raise
            await self._settle(peer, removals, started, ended, raise_failure=True)

    async def _settle(
        self, peer: bytes, removals: _Removals, started: float, ended: str, *, raise_failure: bool
    ) -> None:
        failed = await removals.settle()
        if removals.accepted:
            log.info(
                "delivered %d messages to %s in %.3fs (%s)",
                removals.accepted,
                peer.hex(),
                self._clock.monotonic() - started,
                ended,
            )
        for error in failed[1 if raise_failure else 0 :]:
            log.warning("moving delivered messages to the unconfirmed list failed: %s", error)
        if raise_failure and failed:
            raise failed[0]

    async def _send_queue(
        self, peer: bytes, drain: Drain, in_hand: set[str], removals: _Removals
    ) -> str:
        """Sends batch after batch, reading the next one from Redis (passing over the
        messages in hand) while the current one goes out, so that a drain costs little
        more than its sends. Returns why it ended."""
        batch = await self._read(peer, drain, frozenset())
        while batch:
            in_hand.update(m.id for m in batch)
            following = asyncio.create_task(self._read(peer, drain, frozenset(in_hand)))
            try:
                ended = await self._send_batch(peer, batch, in_hand, removals)
            finally:
                # Awaited even when the drain stops: the read may have removed expired
                # messages, which are counted only when it returns.
                next_batch = (await asyncio.gather(following, return_exceptions=True))[0]
            if ended:
                return ended
            if isinstance(next_batch, BaseException):
                raise next_batch
            batch = next_batch
        if self._stopping.is_set():
            return "daemon stopping"
        return "queue empty" if self._peers.is_online(peer) and not drain.left else "peer offline"

    async def _read(self, peer: bytes, drain: Drain, skip: frozenset[str]) -> list[StoredMessage]:
        """The next batch, passing over ``skip``; empty once the peer is gone (also if it
        is back: a new connection gets a drain of its own) or we stop. Waits out a Redis
        outage."""

        async def peek() -> tuple[list[StoredMessage], list[StoredMessage]]:
            if self._stopping.is_set() or not self._peers.is_online(peer) or drain.left:
                return [], []
            return await self._queues.peek(peer, self._clock.now(), limit=_BATCH, skip=skip)

        try:
            ready, expired = await self._read_retry.call(peek, stop=self._stopping)
        except StoreUnavailableError:
            if self._stopping.is_set():
                return []
            raise
        for message in expired:
            self._reporter.expired(peer, message.id, message.size)
        return ready

    async def _send_batch(
        self,
        peer: bytes,
        batch: list[StoredMessage],
        in_hand: set[str],
        removals: _Removals,
    ) -> str:
        """Sends ``batch`` in order, handing what lnd accepted to ``removals``. Empty when
        the whole batch went out, else why the drain stops."""
        for message in batch:
            if self._stopping.is_set():
                return "daemon stopping"
            if message.expires_at <= self._clock.now():
                # Expired while in hand: a later read (this drain's or the sweep) counts it.
                in_hand.discard(message.id)
                continue
            ended = await self._send_one(peer, message)
            if ended:
                return ended
            await removals.add(message)
        return ""

    async def _send_one(self, peer: bytes, message: StoredMessage) -> str:
        """Empty when lnd accepted the message, else why the drain stops."""
        try:
            await self._sender.send(peer, message.path_key, message.onion)
        except PeerOfflineError:
            # Gone again: lnd's PEER_OFFLINE tells the tracker, the rest waits for PEER_ONLINE.
            return "peer offline"
        except LndCredentialsError:
            raise
        except LndError as e:
            self._lnd_outage.failed(_PeerError(f"to {peer.hex()}: {e}"))
            if not e.retryable and e.code not in _UNSUPPORTED:
                await self._refused(peer, message)
            self._retry_later(peer)
            return "lnd refused, retrying later"
        self._lnd_outage.recovered()
        return ""

    async def _refused(self, peer: bytes, message: StoredMessage) -> None:
        try:
            if message.attempts + 1 >= self._max_attempts:
                if await self._queues.remove(message):
                    self._reporter.dropped(
                        "rejected_by_lnd",
                        sender=message.sender,
                        peer=peer,
                        size=message.size,
                        message_id=message.id,
                    )
            else:
                await self._queues.record_attempt(message)
        except StoreError as e:
            log.warning("could not record a refused delivery of %s: %s", message.id, e)

    async def _move_delivered(
        self, messages: list[StoredMessage], *, peer: bytes, in_hand: set[str], drain: Drain
    ) -> bool:
        """lnd accepted ``messages``: move them to the peer's unconfirmed list (which counts
        and publishes them as delivered), retrying until Redis answers; then they need no
        passing over, and their confirmation is the confirmations' to decide. False if
        Redis was gone while the daemon stops: they stay queued, to be sent again."""
        sent_ms = ms(self._clock.now())
        try:
            await self._removal_retry.call(
                lambda: self._queues.move_delivered(messages, sent_ms), stop=self._stopping
            )
        except StoreUnavailableError:
            if not self._stopping.is_set():
                raise
            _log_left_in_redis(messages)
            return False
        in_hand.difference_update(m.id for m in messages)
        self._confirmations.sent(peer, [(m.id, sent_ms) for m in messages], drain)
        now = sent_ms / 1000
        for message in messages:
            self._reporter.delivered(
                message.peer, message.id, message.size, now - message.received_at, now
            )
        return True
