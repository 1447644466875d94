"""``lndmailbox``: the daemon's entry point.

It reads the settings, connects to lnd and Redis (without ``--redis-url``, the data
directory's embedded server: started, or shared with the other daemons of this host that
use it, see :mod:`~lndmailbox.daemon.datadir_lock`), and runs :class:`~lndmailbox.daemon.roles.Roles` until SIGTERM or SIGINT: a
standby that journals what lnd hands it, and the node's leader (running
:class:`~lndmailbox.daemon.mailbox.Mailbox`) while it holds the node's lock.

Exit codes: 0 after a clean stop (SIGTERM or SIGINT, and nothing failed while stopping),
1 on a fault that stops the daemon (its reason is logged once: a task that died, a
background task that failed), 2 on bad settings, 3 when the embedded Redis server did
not start. Only a signal ends the daemon with 0, so a supervisor's
``Restart=on-failure`` restarts it after every fault. A leader that finds its lock taken
by another daemon is no fault: it stands by again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Sequence

from lndmailbox import __version__
from lndmailbox.config import Settings, add_arguments, settings_from_args
from lndmailbox.daemon.datadir_lock import use_datadir
from lndmailbox.daemon.lsps_service import LspsOptions
from lndmailbox.daemon.mailbox import MailboxOptions
from lndmailbox.daemon.metrics import Metrics
from lndmailbox.daemon.node_lock import LOCK_SOCKET_TIMEOUT, NodeLock
from lndmailbox.daemon.roles import Roles
from lndmailbox.daemon.supervisor import background
from lndmailbox.daemon.wakeups import WakeupOptions
from lndmailbox.daemon.webhook import Notifier
from lndmailbox.errors import ConfigError, LndError, MailboxError, ServerStartError
from lndmailbox.lnd import LndClient, NodeInfo, endpoint_for
from lndmailbox.logs import configure_logging
from lndmailbox.store import (
    Control,
    Store,
    embedded_redis,
    limits_for,
    parse_redis_url,
    redis_url_for,
    replica_wait_for,
)

log = logging.getLogger(__name__)

SUBSCRIBE_SETTLE = 0.2
"""Seconds a new subscription to lnd must go unrefused to count as accepted (lnd refuses
at once, and sends nothing until its first item). A leader waits it out twice before it
is ready, peer events then onion messages: at 0.2 s a standby that takes over is ready
about 0.5 s after it took the lock, well within the 2 s a takeover may take."""

EXIT_STOPPED = 0
EXIT_ERROR = 1
EXIT_BAD_SETTINGS = 2
EXIT_SERVER_START = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lndmailbox",
        description="Keeps onion messages for offline peers of an lnd node in Redis and "
        "delivers them when the peers come back.",
    )
    parser.add_argument("--version", action="version", version=f"lndmailbox {__version__}")
    add_arguments(parser, daemon=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        configure_logging(settings.log_level, settings.log_format)
    except ConfigError as e:
        print(f"lndmailbox: {e}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    try:
        asyncio.run(run(settings))
    except ConfigError as e:
        log.error("%s", e)
        return EXIT_BAD_SETTINGS
    except ServerStartError as e:
        log.error("the embedded Redis server did not start: %s", e)
        return EXIT_SERVER_START
    except MailboxError as e:
        log.error("stopped: %s", e)
        return EXIT_ERROR
    except Exception:
        log.exception("stopped by an unexpected error")
        return EXIT_ERROR
    return EXIT_STOPPED


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Runs the daemon until ``stop`` is set (by default: until SIGTERM or SIGINT)."""
    if settings.redis_url:
        parse_redis_url(settings.redis_url)  # a bad URL is refused before lnd is asked
    stop = stop or _stop_on_signals()
    log.info("lndmailbox %s starting: %s", __version__, settings.redacted())
    endpoint = endpoint_for(settings)
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        if settings.redis_url is None:
            shared = await use_datadir(settings.datadir, embedded_redis(settings), stack, stop)
            if shared is None:
                return
            stack.enter_context(background(shared.guard(stop), stop))
        if settings.metrics_host_port is not None:
            metrics.start_http_server(*settings.metrics_host_port)
            stack.callback(metrics.stop)
        lnd = LndClient(endpoint, on_rpc=metrics.observe_rpc, settle=SUBSCRIBE_SETTLE, stop=stop)
        stack.push_async_callback(lnd.close)
        info = await _wait_for_lnd(lnd, stop)
        if info is None:
            return
        store = Store.from_url(
            redis_url_for(settings),
            info.pubkey,
            limits_for(settings),
            wait=replica_wait_for(settings),
        )
        store.durable.on_short = metrics.replica_wait_short.inc
        stack.push_async_callback(store.aclose)
        # The lock on a connection of its own: its renewals never queue behind the store's.
        lock_control = Control.on_own_connection(
            redis_url_for(settings), info.pubkey, timeout=LOCK_SOCKET_TIMEOUT
        )
        stack.push_async_callback(lock_control.aclose)
        notifier = _start_notifier(settings, metrics, stack, stop)
        roles = Roles(
            lnd=lnd,
            store=store,
            metrics=metrics,
            notifier=notifier,
            info=info,
            lock=NodeLock(lock_control),
            options=MailboxOptions(
                transport=settings.transport,
                allow_channel_peers=settings.allow_channel_peers,
                race_window=settings.race_window,
                confirm_after=settings.confirm_after,
                max_redeliveries=settings.max_redeliveries,
                sweep_interval=settings.sweep_interval,
                buffer_messages=settings.buffer_messages,
                max_in_flight_bytes=settings.max_in_flight_bytes,
                lsps=lsps_options_for(settings),
                wakeups=wakeup_options_for(settings),
            ),
        )
        await roles.run(stop)


def lsps_options_for(settings: Settings) -> LspsOptions | None:
    """``--lsps5``'s limits; None when it is off."""
    if not settings.lsps5:
        return None
    return LspsOptions(
        max_webhooks=settings.lsps5_max_webhooks,
        max_request_bytes=settings.lsps_max_request_bytes,
        requests_per_minute=settings.lsps_requests_per_minute,
        retention=settings.lsps5_retention,
    )


def wakeup_options_for(settings: Settings) -> WakeupOptions:
    return WakeupOptions(
        cooldown=settings.lsps5_cooldown,
        timeout=settings.lsps5_timeout,
        give_up_after=settings.lsps5_give_up,
        ca_file=settings.lsps5_ca_file,
        allow_private=settings.lsps5_allow_private_webhooks,
    )


async def _wait_for_lnd(lnd: LndClient, stop: asyncio.Event) -> NodeInfo | None:
    """What lnd says about its node, once it answers; None if stopped first. Retryable
    errors are waited out by the client's own retry (one outage, logged once), which
    watches ``stop`` (the client's) and abandons a call lnd never answers."""
    try:
        return await lnd.get_info(wait=True)
    except LndError:
        if stop.is_set():
            return None
        raise


def _start_notifier(
    settings: Settings, metrics: Metrics, stack: contextlib.AsyncExitStack, stop: asyncio.Event
) -> Notifier | None:
    """The webhook's notifier, running until the stack unwinds (None without --notify-url)."""
    if not settings.notify_url:
        return None
    assert settings.notify_secret is not None
    notifier = Notifier(
        settings.notify_url,
        settings.notify_secret.encode(),
        timeout=settings.notify_timeout,
        give_up_after=settings.notify_give_up,
        on_failure=lambda reason: metrics.notify_failed.inc(),
    )
    stack.enter_context(background(notifier.run(), stop))
    # Unwound first: what is queued gets a moment to go out before the worker stops.
    stack.push_async_callback(functools.partial(notifier.aclose, drain=2.0))
    return notifier


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
