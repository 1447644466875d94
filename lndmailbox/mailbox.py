"""The daemon: wires lnd's streams, ingest, the keeper, the deliverer and the reporter.

Tasks, all stopped by one event (SIGTERM/SIGINT in production):

- ``peer events``: SubscribePeerEvents; on every (re)subscription the online set is
  rebuilt from ListPeers, because events are not replayed while the stream was down.
  PEER_ONLINE starts a drain of that peer's mail; PEER_OFFLINE (native transport) stores
  what was left to lnd for that peer inside the race window.
- ``onion messages``: the transport's stream feeds a bounded queue that ``workers``
  consumers peel and decide concurrently (each peel is two ECDH round trips to lnd).
- ``keeper``: writes kept messages to Redis, buffering while Redis is away.
- ``sweeper``: removes expired mail everywhere every ``sweep_interval``, updates the
  gauges, and drains any online peer that still has mail (a safety net).
- ``delivery requests``: serves ``mailboxctl deliver``.
- the node lock and heartbeat are the entry point's (daemon.py).
- ``reporter``: writes counters and events to Redis in batches.

Shutdown order keeps every message: stop reading lnd, finish the messages already read,
write what the keeper holds, let deliveries finish the message in hand, flush reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from lndmailbox.clock import Clock, SystemClock, sleep_or_stop
from lndmailbox.deliver import Deliverer
from lndmailbox.errors import LndError, MailboxError, StoreError
from lndmailbox.inbox import Inbox
from lndmailbox.ingest import Arrival, Ingest, RaceGuard, run_workers
from lndmailbox.keeper import Keeper
from lndmailbox.lnd import (
    IncomingOnionMessage,
    LndClient,
    PeerEvent,
    Resubscribed,
    Transport,
    transport_for_version,
)
from lndmailbox.metrics import Metrics
from lndmailbox.notify import Notifier
from lndmailbox.peers import ChannelMap, PeerTracker
from lndmailbox.policy import Policy
from lndmailbox.report import Reporter
from lndmailbox.sphinx import CachedNodeKey
from lndmailbox.store import Store

log = logging.getLogger("lndmailbox.mailbox")

# secp256k1's generator point, compressed: any valid point would do for the signer check.
_GENERATOR = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")


@dataclass(frozen=True)
class MailboxOptions:
    transport: str = "auto"
    allow_channel_peers: bool = False
    race_window: float = 5.0
    sweep_interval: float = 60.0
    buffer_messages: int = 10_000
    workers: int = 64
    drain_timeout: float = 20.0
    """The whole shutdown's budget (compose gives the container 60 s)."""


class Mailbox:
    def __init__(
        self,
        *,
        lnd: LndClient,
        store: Store,
        metrics: Metrics,
        options: MailboxOptions,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._lnd = lnd
        self._store = store
        self._metrics = metrics
        self._options = options
        self._notifier = notifier
        self._clock = clock or SystemClock()
        self.ready = asyncio.Event()
        """Set once the daemon knows who is online and follows both of lnd's streams."""

    def choose_transport(self, version: str) -> Transport:
        if self._options.transport == "auto":
            return transport_for_version(version)
        return Transport(self._options.transport)

    async def run(self, stop: asyncio.Event) -> None:
        info = await self._lnd.get_info()
        transport = self.choose_transport(info.version)
        log.info(
            "serving lnd %s (%s, version %s) with the %s transport",
            info.alias,
            info.pubkey.hex(),
            info.version,
            transport.value,
        )
        # Every peel needs the signer: a macaroon without signer:generate should stop the
        # daemon now, with lnd's answer, not drop every message later.
        await self._lnd.node_key().ecdh(_GENERATOR)
        clock = self._clock
        peers = PeerTracker(clock)
        channels = ChannelMap(self._lnd.channel_peers, clock)
        reporter = Reporter(
            node=info.pubkey, metrics=self._metrics, store=self._store, notifier=self._notifier
        )

        async def send(peer: bytes, path_key: bytes, onion: bytes) -> None:
            await self._lnd.send_onion_message(transport, peer, path_key, onion)

        journal = Inbox(self._store, clock)
        # Read before this daemon journals anything of its own.
        left_over = await journal.left_over(ttl=self._store.limits.ttl)
        deliverer = Deliverer(
            store=self._store, send=send, peers=peers, reporter=reporter, clock=clock
        )
        keeper = Keeper(
            store=self._store,
            reporter=reporter,
            metrics=self._metrics,
            clock=clock,
            buffer_limit=self._options.buffer_messages,
            on_stored=deliverer.kick,
            decided=journal.decided,
        )
        policy = Policy(
            store=self._store,
            channels=channels,
            clock=clock,
            allow_channel_peers=self._options.allow_channel_peers,
        )
        await policy.say_who()
        race = RaceGuard(clock, self._options.race_window)
        ingest = Ingest(
            node_id=info.pubkey,
            node_key=CachedNodeKey(self._lnd.node_key()),
            transport=transport,
            peers=peers,
            channels=channels,
            is_allowed=policy.is_allowed,
            send=send,
            clock=clock,
            keep=keeper.keep,
            decided=journal.decided,
            race=race,
            reporter=reporter,
            metrics=self._metrics,
        )
        inbox: asyncio.Queue[Arrival] = asyncio.Queue(maxsize=self._options.workers * 4)
        peers_known = asyncio.Event()

        async def resync_peers() -> None:
            """Rebuilds the online set from ListPeers, retrying while lnd is not ready."""
            backoff = 0.5
            while True:
                try:
                    online = await self._lnd.list_peers()
                    break
                except LndError as e:
                    if not e.retryable:
                        raise
                    log.warning("could not list lnd's peers (%s); trying again", e)
                    await sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 10.0)
            came, went = peers.reset(online)
            self._metrics.online_peers.set(len(peers.online))
            for peer in went:
                await ingest.peer_went_offline(peer)
            for peer in came:
                deliverer.kick(peer)

        async def follow_peers() -> None:
            events = self._lnd.peer_events()
            # Subscribe first, then read the current state: no change falls between the two.
            await events.wait_subscribed()
            await resync_peers()
            peers_known.set()
            await self._kick_peers_with_mail(peers.online, deliverer)
            async for event in events:
                if isinstance(event, Resubscribed):
                    log.info("peer events resubscribed; resynchronising online peers")
                    await resync_peers()
                    continue
                await on_peer_event(event)

        async def on_peer_event(event: PeerEvent) -> None:
            if not peers.mark(event.pubkey, event.online):
                return
            self._metrics.online_peers.set(len(peers.online))
            if event.online:
                deliverer.kick(event.pubkey)
            elif transport is Transport.NATIVE:
                await ingest.peer_went_offline(event.pubkey)

        async def follow_messages() -> None:
            # Decisions need to know who is online: read nothing before the first ListPeers.
            await peers_known.wait()
            messages = self._lnd.onion_messages(transport)
            # lnd keeps nothing for a subscriber that is not there yet: be on the stream
            # before saying we are ready.
            await messages.wait_subscribed()
            if left_over:
                log.warning("deciding %d messages a previous daemon left undecided", len(left_over))
            for arrival in left_over:
                await inbox.put(arrival)
            self.ready.set()
            log.info("ready: following lnd's peer events and onion messages")
            async for item in messages:
                if isinstance(item, Resubscribed):
                    log.info("onion message stream resubscribed")
                    continue
                if isinstance(item, IncomingOnionMessage):
                    now = clock.now()
                    entry = journal.add(item, now)
                    await inbox.put(Arrival(item, entry, received_at=now))
                else:
                    reporter.dropped(item.reason, sender=item.peer)

        async def sweep() -> None:
            while not await sleep_or_stop(stop, self._options.sweep_interval):
                race.prune()
                with contextlib.suppress(StoreError):
                    for message in await self._store.sweep_expired(clock.now()):
                        reporter.expired(message.peer, message.id, message.size)
                await self._update_gauges()
                # A safety net under every other trigger: every online peer is drained (a
                # peer without mail costs one peek).
                for peer in peers.online:
                    deliverer.kick(peer)

        async def serve_requests() -> None:
            while not stop.is_set():
                try:
                    requested = await self._store.wait_delivery_requests(timeout=1.0)
                except StoreError:
                    await sleep_or_stop(stop, 1.0)
                    continue
                for peer in requested:
                    deliverer.kick(peer)

        async def watch_deliveries() -> None:
            await deliverer.fatal

        readers = [
            _spawn(follow_peers(), "peer-events"),
            _spawn(follow_messages(), "onion-messages"),
            _spawn(sweep(), "sweeper"),
            _spawn(serve_requests(), "delivery-requests"),
            _spawn(watch_deliveries(), "delivery-watch"),
        ]
        workers = _spawn(run_workers(ingest, inbox, self._options.workers), "ingest")
        keeper_stop = asyncio.Event()
        flush_stop = asyncio.Event()
        keeper_task = _spawn(keeper.run(keeper_stop), "keeper")
        reporter_task = _spawn(reporter.run(flush_stop), "reporter")
        journal_task = _spawn(journal.run(flush_stop), "inbox")
        background = [*readers, workers, keeper_task, reporter_task, journal_task]
        try:
            await _until_stop_or_failure(stop, background)
        finally:
            # One budget for the whole shutdown, spent stage by stage in this order.
            deadline = asyncio.get_running_loop().time() + self._options.drain_timeout

            def left() -> float:
                return max(deadline - asyncio.get_running_loop().time(), 0.1)

            log.info("stopping: finishing %d received messages", inbox.qsize())
            await _cancel(readers)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inbox.join(), left())
            await _cancel([workers])
            keeper_stop.set()
            await _settle(keeper_task, left())
            await deliverer.close(left())
            flush_stop.set()
            await _settle(reporter_task, left())
            await _settle(journal_task, left())
            log.info("stopped")

    async def _kick_peers_with_mail(self, online: frozenset[bytes], deliverer: Deliverer) -> None:
        try:
            with_mail = await self._store.peers_with_mail()
        except StoreError as e:
            log.warning("could not list peers with mail at start: %s", e)
            return
        for peer in with_mail:
            if peer in online:
                deliverer.kick(peer)
        await self._update_gauges()

    async def _update_gauges(self) -> None:
        try:
            peers, messages, size = await self._store.totals()
        except StoreError:
            return
        self._metrics.queued_messages.set(messages)
        self._metrics.queued_bytes.set(size)
        self._metrics.peers_with_mail.set(peers)


def _spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(coro, name=name)


async def _until_stop_or_failure(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Waits for ``stop``; a task that ends first takes the daemon down with it.

    Every task runs until stopped, so one that ends early is a failure even without an
    error: the daemon stops rather than run on with a part missing.
    """
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if stop.is_set():
        return
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
        raise MailboxError(f"the {task.get_name()} task ended on its own")


async def _cancel(tasks: list[asyncio.Task[None]], within: float = 5.0) -> None:
    """Cancels ``tasks`` and waits up to ``within`` seconds for them to end.

    A task that does not end in time is named in the log with where it hangs, and left
    behind: shutdown goes on rather than wait for ever.
    """
    for task in tasks:
        task.cancel()
    done, hanging = await asyncio.wait(tasks, timeout=within)
    for task in hanging:
        stack = io.StringIO()
        task.print_stack(file=stack)
        log.error(
            "task %s did not stop within %.0fs: %s", task.get_name(), within, stack.getvalue()
        )
    for task in done:
        if not task.cancelled() and isinstance(task.exception(), LndError | StoreError):
            log.warning("%s", task.exception())


async def _settle(task: asyncio.Task[None], within: float) -> None:
    """Waits up to ``within`` seconds for ``task`` to end by itself, then cancels it."""
    try:
        await asyncio.wait_for(asyncio.shield(task), within)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
