"""The composition root: builds every part of the daemon once and runs its tasks.

Nothing here decides anything about a message; each rule lives in the task that keeps
it, named below with its module:

- the peer follower (``peer_follower``): lnd's peer events and ListPeers -> who is online;
- the message reader (``message_reader``): lnd's onion stream -> journal -> decision queue;
- the decider (``decider``): peels and decides, ``workers`` messages at a time;
- the store writer (``store_writer``): writes kept messages to Redis, buffering outages;
- the deliverer (``deliverer``): drains a peer's mail through lnd when it is online;
- the confirmations (``confirmations``): what lnd took is deleted once confirmed, or goes
  back to its queue when its peer left first;
- the sweeper (``sweeper``): expiry, gauges, and a drain of every online peer;
- the request server (``request_server``): serves ``mailboxctl deliver``;
- the alias check (``peers.AliasCheck``, native transport only): warns of private
  channels whose SCID aliases lnd cannot forward by, at start and every 10 minutes;
- the journal writer (``journal_writer``) and the reporter (``outcomes``): batched
  writes of the journal and of counters and events;
- the inbox look (``inbox_look``): decides what only a standby journaled;
- with ``--lsps5``, the LSPS0 server (``lsps_service``: the clients' webhooks) and the
  wake-ups (``wakeups``: the notifications the stored mail and new webhooks get).

The mailbox runs on the node's leader only (``roles``); a standby journals and nothing
more (``standby``).

Start-up order: lnd's signer must answer first (a macaroon without ``signer:generate``
stops the daemon now, not every message later); a mailbox in the old key layout moves to
the current one (``old_layout``); the journal a previous daemon left is read before this
one journals anything; with ``--lsps5``, SignMessage must answer too, or LSPS5 is off
(one log line: a macaroon without ``message:write``) and the mailbox runs without it;
the peer follower subscribes before it lists peers; the reader
waits for that list and says ready once it is on lnd's stream. Nothing else waits before
the streams: lnd 0.21 keeps no backlog for a late subscriber, so what
is not needed to decide a message (the alias check) runs beside them.

Shutdown order keeps every message, in one time budget (``drain_timeout``): stop reading
lnd, finish deciding the messages already read, write what the store writer holds, flush
the journal (every decision is in Redis now: ``on_decided`` hands the lead over, so a
standby takes over while this one finishes), let deliveries finish the message in hand,
flush counters and events.

The budget is what keeps SIGTERM's promise (the daemon exits within 5 s, whatever is
away): each stage gets what is left of it, the decider at most half (an lnd that stopped
answering must not starve the writer), the writer and the deliveries all but
``_FLUSH_RESERVE`` (the last flushes of the journal, counters and events). A stage still
running when its time is up is cancelled, which loses nothing that reached Redis: a
message the decider did not get to stays journaled for the next daemon, a delivery cut
short is sent again (a duplicate, never a loss). What cannot reach Redis because Redis is
away is counted as lost (``shutdown``), with one line saying how many: the store writer's
buffer (``StoreWriter``), what was never journaled (``JournalWriter``), and messages read
while Redis was away that the decider did not get to (here).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lndmailbox.clock import Clock, SystemClock
from lndmailbox.config import CONFIRM_AFTER, MAX_REDELIVERIES
from lndmailbox.daemon.confirmations import Confirmations
from lndmailbox.daemon.decider import Decider
from lndmailbox.daemon.decision_queue import Arrival, DecisionQueue
from lndmailbox.daemon.deliverer import Deliverer
from lndmailbox.daemon.gauges import QueueGauges
from lndmailbox.daemon.inbox_look import InboxLook
from lndmailbox.daemon.interfaces import Sender
from lndmailbox.daemon.journal_writer import JournalWriter
from lndmailbox.daemon.lsps_service import LspsOptions, LspsService
from lndmailbox.daemon.message_reader import MessageReader
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.old_layout import move_old_layout
from lndmailbox.daemon.outcomes import Reporter
from lndmailbox.daemon.outgoing import LeaseGatedSender, LndSender
from lndmailbox.daemon.peer_follower import PeerFollower
from lndmailbox.daemon.peers import ALIAS_CHECK_INTERVAL, AliasCheck, ChannelMap, PeerTracker
from lndmailbox.daemon.policy import Policy
from lndmailbox.daemon.race_guard import RaceGuard
from lndmailbox.daemon.request_server import RequestServer
from lndmailbox.daemon.store_writer import StoreWriter
from lndmailbox.daemon.supervisor import Stoppable, cancel, spawn, until_stop_or_failure
from lndmailbox.daemon.sweeper import Sweeper
from lndmailbox.daemon.wakeups import WakeupOptions, Wakeups
from lndmailbox.daemon.webhook import Notifier
from lndmailbox.errors import LndError, LndPermissionError, MailboxError
from lndmailbox.lnd import LndClient, Transport, transport_for_version
from lndmailbox.onion import CachedNodeKey
from lndmailbox.store import Store

log = logging.getLogger(__name__)

# secp256k1's generator point, compressed: any valid point would do for the signer check.
_GENERATOR = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")


@dataclass(frozen=True)
class MailboxOptions:
    transport: str = "auto"
    allow_channel_peers: bool = False
    race_window: float = 5.0
    confirm_after: float = CONFIRM_AFTER
    max_redeliveries: int = MAX_REDELIVERIES
    sweep_interval: float = 60.0
    buffer_messages: int = 10_000
    workers: int = 64
    max_in_flight_bytes: int = 16 * 1024**2
    drain_timeout: float = 2.0
    """The whole shutdown's budget. With what follows it (the node lock's release, closing
    connections, up to 2 s for queued webhook notifications) a stop takes under 5 s; a
    healthy shutdown needs a fraction of it (see the module docstring for what a stage
    cut short leaves behind)."""
    alias_check_interval: float = ALIAS_CHECK_INTERVAL
    """Seconds between the native transport's alias checks (not a setting: for tests)."""
    lsps: LspsOptions | None = None
    """``--lsps5``: serve LSPS0 and LSPS5 with these limits (None: off)."""
    wakeups: WakeupOptions = field(default_factory=WakeupOptions)
    """LSPS5's notifications, when ``lsps`` is on."""


def choose_transport(flag: str, version: str) -> Transport:
    """``--transport``; with ``auto``, the transport lnd's ``version`` supports (the one
    place the version is mapped, so a version the mapping does not know is a problem only
    when the flag leaves the choice to it)."""
    if flag == "auto":
        return transport_for_version(version)
    return Transport(flag)


@dataclass
class _Pipeline:
    """The parts a message passes through, built once."""

    peers: PeerTracker
    race: RaceGuard
    reporter: Reporter
    journal: JournalWriter
    left_over: list[Arrival]
    deliverer: Deliverer
    writer: StoreWriter
    queue: DecisionQueue
    decider: Decider
    confirmations: Confirmations
    channels: ChannelMap
    lsps: _Lsps | None


@dataclass
class _Lsps:
    """LSPS5's two parts, when it is on."""

    service: LspsService
    wakeups: Wakeups


@dataclass
class _Running:
    """The pipeline's tasks, and the events that stop each stage in turn."""

    services: list[asyncio.Task[None]]
    """They take lnd's streams, sweep, serve requests, watch deliveries: stopped first."""
    decider: asyncio.Task[None]
    writer: asyncio.Task[None]
    reporter: asyncio.Task[None]
    journal: asyncio.Task[None]
    deciding_stop: asyncio.Event
    writing_stop: asyncio.Event
    journal_stop: asyncio.Event
    flushing_stop: asyncio.Event

    @property
    def all(self) -> list[asyncio.Task[None]]:
        return [*self.services, self.decider, self.writer, self.reporter, self.journal]


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
        on_decided: Callable[[], Awaitable[None]] | None = None,
        in_lease: asyncio.Event | None = None,
    ) -> None:
        self._lnd = lnd
        self._store = store
        self._metrics = metrics
        self._options = options
        self._notifier = notifier
        self._clock = clock or SystemClock()
        self._on_decided = on_decided
        """Called at the stop once every decision is written (the lead is handed over)."""
        self._in_lease = in_lease
        """Set while the node lock's lease is this leader's: nothing goes to lnd otherwise."""
        self.ready = asyncio.Event()
        """Set once the daemon knows who is online and follows both of lnd's streams."""

    async def run(self, stop: asyncio.Event) -> None:
        """Serves lnd until ``stop`` is set or a task fails (its error goes up)."""
        try:
            info = await self._lnd.get_info(wait=True)
            # Every peel needs the signer: a macaroon without signer:generate should stop
            # the daemon now, with lnd's answer, not drop every message later.
            await self._lnd.node_key().ecdh(_GENERATOR)
            lsps = await self._lsps_signs()
        except LndError:
            if stop.is_set():  # lnd went away while we started, and we were told to stop
                return
            raise
        transport = choose_transport(self._options.transport, info.version)
        log.info(
            "serving lnd %s (%s, version %s) with the %s transport",
            info.alias,
            info.pubkey.hex(),
            info.version,
            transport.value,
        )
        if not await move_old_layout(self._store, stop):
            return
        pipeline = await self._build(info.pubkey, transport, lsps)
        running = self._start(pipeline, self._services(pipeline, transport), stop)
        try:
            await until_stop_or_failure(stop, running.all)
        finally:
            failures = await self._shut_down(pipeline, running)
        if failures:
            raise failures[0]

    async def _lsps_signs(self) -> LspsOptions | None:
        """``--lsps5``'s options if lnd signs for LSPS5 (None: off, said once)."""
        if self._options.lsps is None:
            return None
        try:
            await self._lnd.sign_message(b"lndmailbox: may LSPS5 sign?")
        except LndPermissionError as e:
            log.warning(
                "LSPS5 is off: lnd will not sign its notifications (%s); bake the "
                "macaroon with message:write to serve it (docs/lnd.md)",
                e,
            )
            return None
        return self._options.lsps

    async def _build(
        self, node: bytes, transport: Transport, lsps_options: LspsOptions | None
    ) -> _Pipeline:
        """The message's way through the daemon, each part handed what it works with."""
        store, clock, metrics, options = self._store, self._clock, self._metrics, self._options
        peers = PeerTracker(clock)
        channels = ChannelMap(self._lnd, clock)
        sender: Sender = LndSender(self._lnd, transport)
        if self._in_lease is not None:
            sender = LeaseGatedSender(LndSender(self._lnd, transport), self._in_lease)
        reporter = Reporter(
            node=node, metrics=metrics, events=store.events, notifier=self._notifier
        )
        journal = JournalWriter(store.journal, clock, reporter, metrics)
        # Read before this daemon journals anything of its own.
        left_over = await journal.left_over(ttl=store.limits.ttl)
        confirmations = Confirmations(
            queues=store.queues,
            peers=peers,
            reporter=reporter,
            clock=clock,
            confirm_after=options.confirm_after,
            max_redeliveries=options.max_redeliveries,
        )
        deliverer = Deliverer(
            queues=store.queues,
            sender=sender,
            peers=peers,
            confirmations=confirmations,
            reporter=reporter,
            clock=clock,
        )
        writer = StoreWriter(
            queues=store.queues,
            ttl=store.limits.ttl,
            reporter=reporter,
            metrics=metrics,
            clock=clock,
            buffer_limit=options.buffer_messages,
            delivery=deliverer,
            journal=journal,
        )
        policy = Policy(
            allowlist=store.allowlist,
            channels=channels,
            clock=clock,
            allow_channel_peers=options.allow_channel_peers,
        )
        await policy.say_who()
        lsps = None
        if lsps_options is not None:
            wakeups = Wakeups(
                signer=self._lnd,
                webhooks=store.webhooks,
                reporter=reporter,
                clock=clock,
                options=options.wakeups,
            )
            reporter.wake_with(wakeups)
            service = LspsService(
                lnd=self._lnd,
                transport=transport,
                store=store,
                channels=channels,
                wakeups=wakeups,
                reporter=reporter,
                clock=clock,
                options=lsps_options,
            )
            lsps = _Lsps(service, wakeups)
        race = RaceGuard(clock, options.race_window)
        queue = DecisionQueue(maxsize=options.workers * 4)
        node_key = self._lnd.node_key()
        decider = Decider(
            node_id=node,
            node_key=node_key,
            path_keys=CachedNodeKey(node_key),
            transport=transport,
            peers=peers,
            channels=channels,
            policy=policy,
            sender=sender,
            keeper=writer,
            journal=journal,
            race=race,
            reporter=reporter,
            metrics=metrics,
            clock=clock,
            queue=queue,
            workers=options.workers,
        )
        return _Pipeline(
            peers,
            race,
            reporter,
            journal,
            left_over,
            deliverer,
            writer,
            queue,
            decider,
            confirmations,
            channels,
            lsps,
        )

    def _services(self, pipeline: _Pipeline, transport: Transport) -> dict[str, Stoppable]:
        """The tasks that run until the daemon stops, by task name."""
        store, p = self._store, pipeline
        gauges = QueueGauges(store.queues, self._metrics)
        peers_known = asyncio.Event()
        reader = MessageReader(
            lnd=self._lnd,
            transport=transport,
            journal=p.journal,
            queue=p.queue,
            reporter=p.reporter,
            hearing=p.confirmations,
            metrics=self._metrics,
            clock=self._clock,
            left_over=p.left_over,
            peers_known=peers_known,
            ready=self.ready,
            max_in_flight_bytes=self._options.max_in_flight_bytes,
            on_lsps=None if p.lsps is None else p.lsps.service.offer,
        )
        services: dict[str, Stoppable] = {
            "peer-follower": PeerFollower(
                lnd=self._lnd,
                transport=transport,
                peers=p.peers,
                decider=p.decider,
                delivery=p.deliverer,
                confirmations=p.confirmations,
                queues=store.queues,
                gauges=gauges,
                metrics=self._metrics,
                known=peers_known,
                connections=None if p.lsps is None else p.lsps.wakeups,
            ),
            "message-reader": reader,
            "sweeper": Sweeper(
                queues=store.queues,
                race=p.race,
                reporter=p.reporter,
                gauges=gauges,
                peers=p.peers,
                delivery=p.deliverer,
                clock=self._clock,
                interval=self._options.sweep_interval,
            ),
            "request-server": RequestServer(store.control, p.deliverer),
            "deliverer": p.deliverer,
            "confirmations": p.confirmations,
            "inbox-look": InboxLook(
                journal=store.journal,
                writer=p.journal,
                queue=p.queue,
                metrics=self._metrics,
                clock=self._clock,
                ttl=store.limits.ttl,
                max_in_flight_bytes=self._options.max_in_flight_bytes,
                ready=self.ready,
                caught_up=reader.caught_up_at,
            ),
        }
        if p.lsps is not None:
            services["lsps"] = p.lsps.service
            services["wakeups"] = p.lsps.wakeups
        if transport is Transport.NATIVE:
            # lnd >= 0.21 forwards by some SCIDs only: the operator hears of the others.
            services["alias-check"] = AliasCheck(
                self._lnd, interval=self._options.alias_check_interval
            )
        return services

    def _start(
        self, pipeline: _Pipeline, services: dict[str, Stoppable], stop: asyncio.Event
    ) -> _Running:
        """Starts every task: the services run until ``stop``; the stages behind them until
        their own stop event, which the shutdown sets in order."""
        deciding_stop = asyncio.Event()
        writing_stop = asyncio.Event()
        journal_stop = asyncio.Event()
        flushing_stop = asyncio.Event()
        return _Running(
            services=[spawn(task.run(stop), name) for name, task in services.items()],
            decider=spawn(pipeline.decider.run(deciding_stop), "decider"),
            writer=spawn(pipeline.writer.run(writing_stop), "store-writer"),
            reporter=spawn(pipeline.reporter.run(flushing_stop), "reporter"),
            journal=spawn(pipeline.journal.run(journal_stop), "journal-writer"),
            deciding_stop=deciding_stop,
            writing_stop=writing_stop,
            journal_stop=journal_stop,
            flushing_stop=flushing_stop,
        )

    async def _shut_down(self, pipeline: _Pipeline, running: _Running) -> list[MailboxError]:
        """Stops stage after stage, in one budget for the whole shutdown; returns what the
        stages failed with, so that a failure still ends the daemon non-zero."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.drain_timeout

        def left(share: float = 1.0, keep: float = 0.0) -> float:
            return max((deadline - loop.time() - keep) * share, _LEAST)

        log.info("stopping: finishing %d received messages", pipeline.queue.qsize())
        lost_before = self._lost_at_shutdown()
        # lnd's streams first: nothing new comes in.
        failures = await cancel(running.services, within=left())
        running.deciding_stop.set()
        failures += await _finish(running.decider, left(share=0.5))
        self._account_for_undecided(pipeline)
        running.writing_stop.set()
        failures += await _finish(running.writer, left(keep=_FLUSH_RESERVE))
        running.journal_stop.set()
        failures += await _finish(running.journal, left(keep=_FLUSH_RESERVE / 2))
        if self._on_decided is not None:
            await self._on_decided()  # every decision is written: a standby may lead now
        await pipeline.deliverer.close(left(keep=_FLUSH_RESERVE / 2))
        running.flushing_stop.set()
        failures += await _finish(running.reporter, left())
        took = self._options.drain_timeout - (deadline - loop.time())
        log.info(
            "in flight at most since start: %d bytes journaled, %d bytes in the decision "
            "queue (--max-in-flight-bytes %d)",
            pipeline.journal.peak_bytes,
            pipeline.queue.peak_bytes,
            self._options.max_in_flight_bytes,
        )
        lost = self._lost_at_shutdown() - lost_before
        if lost:
            log.error(
                "stopped in %.1fs; %d messages held in memory could not reach Redis and are "
                "lost (counted as lost, reason shutdown)",
                took,
                lost,
            )
        else:
            log.info("stopped in %.1fs; every message read is stored, decided or journaled", took)
        return failures

    def _lost_at_shutdown(self) -> int:
        value = self._metrics.registry.get_sample_value(
            "lndmailbox_lost_total", {"reason": "shutdown"}
        )
        return int(value or 0)

    @staticmethod
    def _account_for_undecided(pipeline: _Pipeline) -> None:
        """What the decider left when it stopped: journaled, the next daemon decides it;
        read while Redis was away (not journaled), it is lost, and counted."""
        undecided = pipeline.queue.undecided()
        if not undecided:
            return
        lost = [arrival for arrival in undecided if arrival.entry is None]
        log.warning(
            "stopping with %d messages read from lnd and not decided: %d stay journaled for "
            "the next daemon, %d were never journaled (Redis was away) and are lost",
            len(undecided),
            len(undecided) - len(lost),
            len(lost),
        )
        for arrival in lost:
            pipeline.reporter.lost(b"", arrival.size, "shutdown")


_LEAST = 0.1
"""Seconds a stage gets even when the budget is spent: one more try at Redis."""
_FLUSH_RESERVE = 0.3
"""Seconds of the budget kept for the last flushes of the journal, counters and events."""
_UNWIND = 0.5
"""Seconds a cancelled stage gets to unwind before it is reported as hanging."""


async def _finish(task: asyncio.Task[None], within: float) -> list[MailboxError]:
    """Waits up to ``within`` seconds for ``task`` to end by itself, then cancels it;
    returns what it failed with (see :func:`cancel`)."""
    await asyncio.wait([task], timeout=within)
    return await cancel([task], within=_UNWIND)
