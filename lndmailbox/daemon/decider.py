"""The decider: learn where each incoming onion message goes, and decide what becomes of it.

The rules, in order, for a message that arrived from ``sender``:

1. Its next hop. On lnd 0.21 it is read from the ``encrypted_recipient_data`` lnd published
   with the message (:func:`~lndmailbox.onion.read_next_hop`: one ECDH, on the path key,
   answered from a cache of path keys when its blinded path was seen before), and the
   message is peeled (the onion's ECDH, and the next packet) only if it is to be kept or
   sent: lnd checked the packet before publishing it, and forwards what it can itself.
   Otherwise (lnd 0.20, whose custom messages carry the bare packet, or data missing or
   unreadable: counted by reason in ``peel_fallbacks``) it is peeled at once. A peel that
   fails drops the message, reason from the typed
   :class:`~lndmailbox.errors.OnionError`; if we are its final hop it is not the
   mailbox's business (drop ``final_hop``). A late peel naming another next hop than the
   published data decides by the peel (``mismatch``).
2. The next hop is named by node id, or by short_channel_id resolved through lnd's
   channels and aliases (unknown: drop ``unknown_scid``). A next hop equal to the sender
   (``loopback``) or to our own node (``next_hop_is_self``) is dropped.
3. Next hop online: the custom transport sends it now. The native transport leaves it to
   lnd, which forwards it itself, if the hop has been online since ``--race-window``
   before the earliest moment lnd may have tried (:meth:`RaceGuard.lnd_could_forward
   <lndmailbox.daemon.race_guard.RaceGuard.lnd_could_forward>`), and remembers it for the
   race window (:mod:`~lndmailbox.daemon.race_guard`). A hop that came online later may
   have been away at lnd's try: the message is kept, so the deliverer sends it at once,
   reported ``rescued`` (``came_online``), a duplicate whenever lnd's try worked; a peer
   the policy does not allow is left to lnd all the same. A message a previous daemon
   left (replayed) is sent now, lnd's try long past.
4. Next hop offline: stored if the peer is allowed (:class:`~lndmailbox.daemon.policy.Policy`),
   else dropped ``not_allowed``.

A message is rescued once at most: one kept because its hop came online is not left to
lnd, so the race guard never holds it when the hop then goes offline.

Every message is decided exactly once: its journal entry is forgotten when it is decided,
or by the store writer once it is stored; a message cut short by shutdown stays journaled
and the next daemon decides it.

lnd failing us is never the message's fault, so it never drops one:

- lnd refusing the macaroon (:class:`~lndmailbox.errors.LndCredentialsError`: expired,
  revoked, a permission missing), from the signer or any other call, leaves the message
  undecided (journaled) and stops the decider with that error, which stops the daemon
  non-zero; the next daemon, given a macaroon lnd accepts, decides what is journaled.
  That message and those taken afterwards go to the shutdown with the rest left
  undecided (:meth:`DecisionQueue.undecided`): one never journaled (Redis was away) is
  counted lost there.
- the signer away (UNAVAILABLE, lnd restarting) is waited out with
  :class:`~lndmailbox.retry.Retry` until lnd answers or the daemon stops; a message the
  stop cuts short stays journaled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

from lndmailbox.clock import Clock
from lndmailbox.daemon.decision_queue import Arrival, DecisionQueue
from lndmailbox.daemon.interfaces import DecisionLog, Keeper, Sender
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.outgoing import OutgoingMessage
from lndmailbox.daemon.peers import ChannelMap, PeerTracker
from lndmailbox.daemon.policy import Policy
from lndmailbox.daemon.race_guard import LeftToLnd, RaceGuard
from lndmailbox.errors import LndCredentialsError, LndError, OnionError, PeerOfflineError
from lndmailbox.lnd import IncomingOnionMessage, Transport
from lndmailbox.onion import Forward, NextHop, NodeKey, peel, read_next_hop
from lndmailbox.retry import Retry

log = logging.getLogger(__name__)


SET_ASIDE_QUIET = 0.5
"""Seconds without a new message after which a decider refused by lnd stops."""
SET_ASIDE_FOR = 2.0
"""Seconds a decider refused by lnd goes on journaling lnd's stream at most."""


class _Undecided(Exception):
    """Internal: lnd's signer stayed away until the daemon stopped; the message stays
    journaled for the next daemon."""


class _Mismatch(Exception):
    """Internal: the full peel of a message named another next hop than the encrypted data
    lnd published with it; the peel's is the one lnd acted on, so it decides."""

    def __init__(self, forward: Forward) -> None:
        super().__init__("next hop mismatch")
        self.forward = forward


def _passing(error: BaseException) -> bool:
    return isinstance(error, LndError) and error.retryable


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Returns once one of ``waits`` is done; cancels the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class Decider:
    """Decides what the decision queue holds, ``workers`` messages at a time (each ECDH is
    a round trip to lnd's signer). ``path_keys`` does the path keys' ECDH: ``node_key``
    behind a cache."""

    def __init__(
        self,
        *,
        node_id: bytes,
        node_key: NodeKey,
        path_keys: NodeKey,
        transport: Transport,
        peers: PeerTracker,
        channels: ChannelMap,
        policy: Policy,
        sender: Sender,
        keeper: Keeper,
        journal: DecisionLog,
        race: RaceGuard,
        reporter: Reporter,
        metrics: Metrics,
        clock: Clock,
        queue: DecisionQueue,
        workers: int,
    ) -> None:
        self._node_id = node_id
        self._node_key = node_key
        self._path_keys = path_keys
        self._transport = transport
        self._peers = peers
        self._channels = channels
        self._policy = policy
        self._sender = sender
        self._keeper = keeper
        self._journal = journal
        self._race = race
        self._at_risk: list[LeftToLnd] = []
        """Left to lnd just before its peer events broke (:meth:`lost_sight`)."""
        self._to_store: deque[LeftToLnd] = deque()
        """Left to lnd, and to be stored after all (:meth:`store_rescued`)."""
        self._rescue_wanted = asyncio.Event()
        self._rescuing = asyncio.Lock()
        self._reporter = reporter
        self._metrics = metrics
        self._clock = clock
        self._queue = queue
        self._workers = workers
        self._signer = Retry("peeling through lnd's signer", log, retry_on=_passing)
        self._stop: asyncio.Event | None = None
        self._failure: LndCredentialsError | None = None
        self._failed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Decides until ``stop`` is set and every message queued by then is decided.

        Raises :class:`LndCredentialsError` as soon as lnd refuses the macaroon: what is
        queued or in hand then stays journaled, undecided.
        """
        self._stop = stop
        try:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(self._work()) for _ in range(self._workers)]
                workers.append(group.create_task(self._rescuer()))
                await _first(stop.wait(), self._failed.wait())
                if self._failure is None:
                    await _first(self._queue.join(), self._failed.wait())
                if self._failure is None:
                    await _first(self.store_rescued(), self._failed.wait())
                for worker in workers:
                    worker.cancel()
        finally:
            self._lose_unstored()
        if self._failure is not None:
            log.warning("lnd refused the macaroon; stopping once lnd's stream is quiet")
            await self._set_aside()
            raise self._failure

    async def _set_aside(self) -> None:
        """After lnd refused the macaroon: takes, undecided, what lnd's stream still brings
        (the reader journaled it), until the queue has been quiet for
        :data:`SET_ASIDE_QUIET` seconds, :data:`SET_ASIDE_FOR` at most, or the daemon
        stops. Messages often come together, and the stop that follows cuts lnd's stream
        (which has no acknowledgement): what lnd had sent by then is journaled, not lost.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + SET_ASIDE_FOR
        while (left := end - loop.time()) > 0 and not (self._stop and self._stop.is_set()):
            try:
                async with asyncio.timeout(min(left, SET_ASIDE_QUIET)):
                    arrival = await self._queue.get()
            except TimeoutError:
                return
            self._queue.leave_undecided(arrival)  # journaled, or lost at shutdown if not
            self._queue.task_done()

    async def _work(self) -> None:
        while self._failure is None:
            arrival = await self._queue.get()
            try:
                await self.decide(arrival)
            except LndCredentialsError as e:
                self._queue.leave_undecided(arrival)
                if self._failure is None:
                    self._failure = e
                    self._failed.set()
            finally:
                self._queue.task_done()

    async def decide(self, arrival: Arrival) -> None:
        """Decides one incoming message. Never raises for anything a peer can send.

        A message cut short (cancelled, or lnd's signer away until the stop) stays
        journaled: the next daemon decides it. lnd refusing the macaroon raises
        :class:`LndCredentialsError` and leaves the message journaled too.
        """
        kept = False
        try:
            kept = await self._decide(arrival)
        except (asyncio.CancelledError, LndCredentialsError):
            raise  # undecided: it stays journaled and the next daemon decides it
        except _Undecided:
            return
        except Exception:
            log.exception("unexpected error while deciding a message; it was dropped")
            self._reporter.dropped("internal_error", sender=arrival.message.peer)
        if not kept:
            self._journal.decided(arrival.entry)

    async def _decide(self, arrival: Arrival) -> bool:
        """True when the message went to the keeper (which then owns its journal entry)."""
        message = arrival.message
        self._reporter.received(message.peer, len(message.path_key) + len(message.onion))
        hop = await self._read_next_hop(message)
        try:
            if hop is not None:
                return await self._route(arrival, hop, None)
            forward = await self._peel(message)
            return forward is not None and await self._route(arrival, forward.next_hop, forward)
        except _Mismatch as e:
            return await self._route(arrival, e.forward.next_hop, e.forward)

    async def _read_next_hop(self, message: IncomingOnionMessage) -> NextHop | None:
        """Native transport: the next hop, from the encrypted data lnd published, with the
        path key's ECDH (cached) alone; None (counted) when it must come from a full peel."""
        if self._transport is not Transport.NATIVE:
            return None
        encrypted = message.encrypted_recipient_data
        if not encrypted:
            self._metrics.peel_fallbacks.labels(reason="missing").inc()
            return None
        try:
            hop = await self._signer.call(
                lambda: read_next_hop(message.path_key, encrypted, self._path_keys),
                stop=self._stop,
            )
        except OnionError as e:
            self._metrics.peel_fallbacks.labels(reason=e.reason).inc()
            log.debug("next hop not read from lnd's encrypted data (%s); peeling in full", e)
            return None
        except LndCredentialsError:
            raise
        except LndError as e:
            if e.retryable:
                raise _Undecided from e
            return None  # the full peel meets the same answer, and reports it
        self._metrics.next_hops_read.inc()
        return hop

    async def _peel(self, message: IncomingOnionMessage) -> Forward | None:
        """The next hop's part, or None (reported) when there is nothing to pass on."""
        sender = message.peer
        started = time.perf_counter()
        try:
            result = await self._signer.call(
                lambda: peel(
                    message.path_key, message.onion, self._node_key, path_node=self._path_keys
                ),
                stop=self._stop,
            )
        except OnionError as e:
            self._reporter.dropped(e.reason, sender=sender)
            return None
        except LndCredentialsError:
            raise
        except LndError as e:
            if e.retryable:  # lnd was still away when the daemon stopped
                raise _Undecided from e
            # An answer of lnd's signer that no retry mends, and no macaroon trouble.
            log.error("ECDH through lnd failed (%s); message from %s dropped", e, sender.hex())
            self._reporter.dropped("signer_unavailable", sender=sender)
            return None
        finally:
            self._metrics.peel_seconds.observe(time.perf_counter() - started)
        if not isinstance(result, Forward):
            self._reporter.dropped("final_hop", sender=sender)
            return None
        return result

    async def _route(self, arrival: Arrival, hop: NextHop, forward: Forward | None) -> bool:
        """Decides a message whose next hop is ``hop``; ``forward`` is its peeled layer, or
        None while it was not needed: a message left to lnd or dropped is never peeled.
        Raises :class:`_Mismatch` when the peel, done late, names another next hop."""
        sender = arrival.message.peer
        peer = await self._next_hop(hop, sender)
        if peer is None:
            return False
        if self._peers.is_online(peer):
            if self._transport is Transport.NATIVE and not arrival.replayed:
                online_since = self._peers.online_since(peer)
                if self._race.lnd_could_forward(
                    online_since, arrival.not_before
                ) or not await self._policy.is_allowed(peer):
                    self._leave_to_lnd(arrival, peer, hop, forward)
                    return False
                # The hop came online too late to be sure lnd found it there: kept, and
                # the deliverer sends it at once.
                outgoing = await self._outgoing(arrival, peer, hop, forward)
                if outgoing is None:
                    return False
                self._keeper.keep(outgoing)
                self._reporter.rescued(peer, outgoing.size, why="came_online")
                return True
            outgoing = await self._outgoing(arrival, peer, hop, forward)
            return outgoing is not None and await self._send_now(outgoing)
        if not await self._policy.is_allowed(peer):
            self._reporter.dropped("not_allowed", sender=sender, peer=peer, size=arrival.size)
            return False
        outgoing = await self._outgoing(arrival, peer, hop, forward)
        if outgoing is None:
            return False
        self._keeper.keep(outgoing)
        return True

    async def _outgoing(
        self, arrival: Arrival, peer: bytes, hop: NextHop, forward: Forward | None
    ) -> OutgoingMessage | None:
        """What ``peer`` must receive, peeled now if it was not yet; None when the peel
        drops it (reported)."""
        if forward is None:
            forward = await self._peel(arrival.message)
            if forward is None:
                return None
            if not self._peel_agrees(hop, forward, arrival.message.peer):
                raise _Mismatch(forward)
        return self._message_for(arrival, peer, forward)

    def _peel_agrees(self, hop: NextHop, forward: Forward, sender: bytes) -> bool:
        """Whether a late peel names the next hop the published data did (else counted)."""
        if forward.next_hop == hop:
            return True
        self._metrics.peel_fallbacks.labels(reason="mismatch").inc()
        log.error(
            "the encrypted data lnd published for a message from %s names another next hop "
            "than its onion does; deciding it by the onion",
            sender.hex(),
        )
        return False

    def _message_for(self, arrival: Arrival, peer: bytes, forward: Forward) -> OutgoingMessage:
        return OutgoingMessage(
            peer,
            arrival.message.peer,
            forward.next_path_key,
            forward.next_onion,
            arrival.received_at if arrival.received_at is not None else self._clock.now(),
            arrival.entry,
        )

    async def _next_hop(self, hop: NextHop, sender: bytes) -> bytes | None:
        peer = hop.next_node_id
        if peer is None:
            assert hop.short_channel_id is not None
            try:
                peer = await self._channels.peer_for(hop.short_channel_id)
            except LndCredentialsError:
                raise
            except LndError as e:
                log.warning("could not list lnd's channels: %s", e)
                peer = None
            if peer is None:
                self._reporter.dropped("unknown_scid", sender=sender)
                return None
        if peer == sender:
            self._reporter.dropped("loopback", sender=sender, peer=peer)
            return None
        if peer == self._node_id:
            self._reporter.dropped("next_hop_is_self", sender=sender, peer=peer)
            return None
        return peer

    async def _send_now(self, message: OutgoingMessage) -> bool:
        """The custom transport's forward (and a replayed message's): lnd is handed it now;
        kept if lnd finds the peer gone."""
        try:
            await self._sender.send(message.peer, message.path_key, message.onion)
        except PeerOfflineError:
            # lnd's PEER_OFFLINE will tell the tracker; here the message is only kept.
            return await self._keep_if_allowed(message)
        except LndCredentialsError:
            raise
        except LndError as e:
            log.warning("forward to %s failed: %s", message.peer.hex(), e)
            return await self._keep_if_allowed(message)
        self._reporter.forwarded(message.sender, message.peer, message.size)
        return False

    def _leave_to_lnd(
        self, arrival: Arrival, peer: bytes, hop: NextHop, forward: Forward | None
    ) -> None:
        """Native transport, next hop online since well before lnd's try: lnd forwarded it.
        Remembered as it came (peeled only if it was already) for the race window, in case
        the hop was leaving."""
        received_at = arrival.received_at if arrival.received_at is not None else self._clock.now()
        self._race.remember(LeftToLnd(peer, hop, arrival.message, received_at, forward))
        self._reporter.left_to_lnd(arrival.message.peer, peer, arrival.size)

    async def _keep_if_allowed(self, message: OutgoingMessage) -> bool:
        if not await self._policy.is_allowed(message.peer):
            self._reporter.dropped(
                "not_allowed", sender=message.sender, peer=message.peer, size=message.size
            )
            return False
        self._keeper.keep(message)
        return True

    def peer_went_offline(self, peer: bytes) -> None:
        """Native transport: what was left to lnd for ``peer`` just before it left is to be
        stored after all (by the decider's rescuer, :meth:`store_rescued`: its peels must
        not hold up the caller, which follows lnd's peer events)."""
        offline_since = self._peers.offline_since(peer)
        if offline_since is not None:
            self._store_later(self._race.take(peer, offline_since))

    def lost_sight(self) -> None:
        """Native transport, lnd's peer events broke: any next hop may drop (an lnd restart
        drops them all) and come back unseen, so what was left to lnd just before is set
        aside now, to be stored at :meth:`regained_sight`."""
        self._at_risk.extend(self._race.take_all())

    def regained_sight(self) -> None:
        """lnd's peer events are back and the online set rebuilt: what was set aside at the
        break is to be stored (the deliverer sends it to whoever is online); a peer the
        policy does not serve is left to lnd, as it was."""
        at_risk, self._at_risk = self._at_risk, []
        self._store_later(at_risk)

    def _store_later(self, messages: list[LeftToLnd]) -> None:
        if messages:
            self._to_store.extend(messages)
            self._rescue_wanted.set()

    async def _rescuer(self) -> None:
        while self._failure is None:
            await self._rescue_wanted.wait()
            self._rescue_wanted.clear()
            await self.store_rescued()

    async def store_rescued(self) -> None:
        """Stores, one by one and each peeled now, what was left to lnd and must be stored
        after all, until none is left (rescued, ``went_offline``). Those are in memory
        only: one whose peel cannot finish (lnd's signer away until the stop, or refusing
        the macaroon, which stops the daemon) is lost, counted."""
        async with self._rescuing:
            while self._to_store and self._failure is None:
                left = self._to_store[0]
                try:
                    await self._store_after_all(left)
                except (_Undecided, LndCredentialsError) as e:
                    log.warning("a message left to lnd could not be stored after all: %s", e)
                    self._reporter.lost(left.peer, left.size, "shutdown")
                    if isinstance(e, LndCredentialsError) and self._failure is None:
                        self._failure = e
                        self._failed.set()
                except Exception:
                    log.exception("unexpected error while storing a message left to lnd")
                    self._reporter.dropped("internal_error", sender=left.message.peer)
                self._to_store.popleft()

    async def _store_after_all(self, left: LeftToLnd) -> None:
        if not await self._policy.is_allowed(left.peer):
            return  # left to lnd, as for any peer the policy does not serve
        sender = left.message.peer
        forward = left.forward or await self._peel(left.message)
        if forward is None:
            return
        peer = left.peer
        if not self._peel_agrees(left.hop, forward, sender):
            named = await self._next_hop(forward.next_hop, sender)
            if named is None:
                return
            peer = named
            if not await self._policy.is_allowed(peer):
                self._reporter.dropped("not_allowed", sender=sender, peer=peer, size=left.size)
                return
        arrival = Arrival(left.message, None, received_at=left.received_at)
        outgoing = self._message_for(arrival, peer, forward)
        self._keeper.keep(outgoing)
        self._reporter.rescued(outgoing.peer, outgoing.size, why="went_offline")

    def _lose_unstored(self) -> None:
        """At the stop: what was to be stored after all and is not, counted lost; so is what
        was set aside at a break of lnd's peer events that are still away, as it cannot be
        stored without knowing whom the policy serves."""
        for left in self._to_store:
            self._reporter.lost(left.peer, left.size, "shutdown")
        self._to_store.clear()
        if not self._at_risk:
            return
        log.warning(
            "stopping while lnd's peer events are away: %d messages lnd forwarded just "
            "before they broke are not stored again (lnd's restart may have lost them)",
            len(self._at_risk),
        )
        for left in self._at_risk:
            self._reporter.lost(left.peer, left.size, "shutdown")
        self._at_risk = []
