"""The daemon: wires lnd's streams, ingest, the keeper, the deliverer and the reporter.

Tasks, all stopped by one event (SIGTERM/SIGINT in production):

- ``peer events``: SubscribePeerEvents; on every (re)subscription the online set is
  rebuilt from ListPeers, because events are not replayed while the stream was down.
  PEER_ONLINE starts a drain of that peer's mail; PEER_OFFLINE (native transport) stores
  what was left to lnd for that peer inside the race window.
- ``onion messages``: the transport's stream feeds a bounded queue that ``workers``
  consumers peel and decide concurrently (each peel is two ECDH round trips to lnd).
- ``keeper``: writes kept messages to Redis, buffering while Redis is away.
- ``sweeper``: removes expired mail everywhere every ``sweep_interval``.
- ``heartbeat``: renews the node lock and the heartbeat key, and serves delivery
  requests from ``mailboxctl deliver``.
- ``reporter``: writes counters and events to Redis in batches.

Shutdown order keeps every message: stop reading lnd, finish the messages already read,
write what the keeper holds, let deliveries finish the message in hand, flush reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from lndmailbox.clock import Clock, SystemClock, sleep_or_stop
from lndmailbox.deliver import Deliverer
from lndmailbox.errors import LndError, StoreError
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
    heartbeat_interval: float = 5.0
    drain_timeout: float = 10.0


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
        """Set once the daemon follows lnd's streams and has drained online peers."""

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

        journal = Inbox(self._store)
        # Read before this daemon journals anything of its own.
        left_over = await journal.left_over()
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
        race = RaceGuard(clock, self._options.race_window)
        ingest = Ingest(
            node_id=info.pubkey,
            node_key=self._lnd.node_key(),
            transport=transport,
            peers=peers,
            channels=channels,
            is_allowed=policy.is_allowed,
            send=send,
            keep=keeper.keep,
            decided=journal.decided,
            race=race,
            reporter=reporter,
            metrics=self._metrics,
        )
        inbox: asyncio.Queue[Arrival] = asyncio.Queue(maxsize=self._options.workers * 4)

        async def resync_peers() -> None:
            came, went = peers.reset(await self._lnd.list_peers())
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
            await self._kick_peers_with_mail(peers.online, deliverer)
            # lnd keeps nothing for a subscriber that is not there yet: be on both streams
            # before saying we are ready.
            await messages_subscribed.wait()
            if left_over:
                log.warning("deciding %d messages a previous daemon left undecided", len(left_over))
            for entry, message in left_over:
                await inbox.put(Arrival(message, entry, replayed=True))
            self.ready.set()
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

        messages_subscribed = asyncio.Event()

        async def follow_messages() -> None:
            messages = self._lnd.onion_messages(transport)
            await messages.wait_subscribed()
            messages_subscribed.set()
            async for item in messages:
                if isinstance(item, Resubscribed):
                    log.info("onion message stream resubscribed")
                    continue
                if isinstance(item, IncomingOnionMessage):
                    await inbox.put(Arrival(item, await journal.add(item)))
                else:
                    reporter.dropped("malformed", sender=item.peer)

        async def sweep() -> None:
            while not await sleep_or_stop(stop, self._options.sweep_interval):
                race.prune()
                with contextlib.suppress(StoreError):
                    for message in await self._store.sweep_expired(clock.now()):
                        reporter.expired(message.peer, message.id, message.size)
                await self._update_gauges()

        async def serve_requests() -> None:
            while not stop.is_set():
                try:
                    requested = await self._store.wait_delivery_requests(timeout=1.0)
                except StoreError:
                    await sleep_or_stop(stop, 1.0)
                    continue
                for peer in requested:
                    deliverer.kick(peer)

        readers = [
            _spawn(follow_peers(), "peer-events"),
            _spawn(follow_messages(), "onion-messages"),
            _spawn(sweep(), "sweeper"),
            _spawn(serve_requests(), "delivery-requests"),
        ]
        workers = _spawn(run_workers(ingest, inbox, self._options.workers), "ingest")
        keeper_stop = asyncio.Event()
        reporter_stop = asyncio.Event()
        keeper_task = _spawn(keeper.run(keeper_stop), "keeper")
        reporter_task = _spawn(reporter.run(reporter_stop), "reporter")
        journal_task = _spawn(journal.run(reporter_stop), "inbox")
        background = [*readers, workers, keeper_task, reporter_task, journal_task]
        try:
            await _until_stop_or_failure(stop, background)
        finally:
            log.info("stopping: finishing %d received messages", inbox.qsize())
            await _cancel(readers)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inbox.join(), self._options.drain_timeout)
            await _cancel([workers])
            keeper_stop.set()
            await _settle(keeper_task, self._options.drain_timeout)
            await deliverer.close()
            reporter_stop.set()
            await _settle(reporter_task, self._options.drain_timeout)
            await _settle(journal_task, self._options.drain_timeout)
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
            stats = await self._store.stats()
        except StoreError:
            return
        self._metrics.queued_messages.set(stats.messages)
        self._metrics.queued_bytes.set(stats.bytes)
        self._metrics.peers_with_mail.set(stats.peers_with_mail)


def _spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(coro, name=name)


async def _until_stop_or_failure(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Waits for ``stop``; a task that fails first takes the daemon down with its error."""
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    for task in done:
        if task is not stopper and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, LndError | StoreError):
            log.warning("%s", result)


async def _settle(task: asyncio.Task[None], within: float) -> None:
    """Waits up to ``within`` seconds for ``task`` to end by itself, then cancels it."""
    try:
        await asyncio.wait_for(asyncio.shield(task), within)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
