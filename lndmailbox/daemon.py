"""``lndmailbox``: the daemon's entry point.

It reads the settings, connects to lnd and Redis (starting the embedded server when no
``--redis-url`` is given, after locking the data directory so only one daemon owns that
server), takes the node's lock so only one daemon serves a node, and runs
:class:`~lndmailbox.mailbox.Mailbox` until SIGTERM or SIGINT.

Exit codes: 0 after a clean stop, 1 on an error that stops the daemon (its message is
logged), 2 on bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

from lndmailbox import __version__
from lndmailbox.clock import sleep_or_stop
from lndmailbox.config import Settings, add_arguments, settings_from_args
from lndmailbox.dirlock import DirectoryLock
from lndmailbox.errors import ConfigError, LndError, MailboxError, StoreUnavailableError
from lndmailbox.lnd import LndClient, LndEndpoint, resolve_endpoint
from lndmailbox.logs import configure_logging
from lndmailbox.mailbox import Mailbox, MailboxOptions
from lndmailbox.metrics import Metrics
from lndmailbox.notify import Notifier
from lndmailbox.redis_server import RedisServer
from lndmailbox.store import Limits, Store

log = logging.getLogger("lndmailbox")

LOCK_LEASE = 15.0
HEARTBEAT_INTERVAL = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lndmailbox",
        description="Keeps onion messages for offline peers of an lnd node in Redis and "
        "delivers them when the peers come back.",
    )
    parser.add_argument("--version", action="version", version=f"lndmailbox {__version__}")
    add_arguments(parser, daemon=True)
    return parser


def lnd_endpoint(settings: Settings) -> LndEndpoint:
    return resolve_endpoint(
        rpcserver=settings.rpcserver,
        lnddir=settings.lnddir,
        network=settings.network,
        tlscertpath=settings.tlscertpath,
        macaroonpath=settings.macaroonpath,
        tlscert=settings.tlscert,
        macaroon=settings.macaroon,
        lndconnect=settings.lndconnect,
    )


def embedded_redis(settings: Settings) -> RedisServer:
    """The Redis-protocol server the daemon runs itself when no --redis-url is given."""
    return RedisServer(
        settings.datadir / "redis",
        persist=True,
        unix_socket=embedded_socket_path(settings.datadir),
    )


def embedded_socket_path(datadir: Path) -> Path:
    return datadir / "redis" / "redis.sock"


def redis_url_for(settings: Settings) -> str:
    """The Redis the settings name: --redis-url, or the embedded server's socket."""
    if settings.redis_url:
        return settings.redis_url
    return f"unix://{embedded_socket_path(settings.datadir)}?db=0"


def limits_for(settings: Settings) -> Limits:
    return Limits(
        ttl=settings.ttl,
        max_messages_per_peer=settings.max_messages_per_peer,
        max_bytes_per_peer=settings.max_bytes_per_peer,
        max_bytes_total=settings.max_bytes_total,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        configure_logging(settings.log_level, settings.log_format)
    except ConfigError as e:
        print(f"lndmailbox: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(settings))
    except ConfigError as e:
        log.error("%s", e)
        return 2
    except MailboxError as e:
        log.error("stopped: %s", e)
        return 1
    return 0


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Runs the daemon until ``stop`` is set (by default: until SIGTERM or SIGINT)."""
    stop = stop or _stop_on_signals()
    log.info("lndmailbox %s starting: %s", __version__, settings.redacted())
    endpoint = lnd_endpoint(settings)
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        if settings.redis_url is None:
            if not await _hold_datadir(settings.datadir, stack, stop):
                return
            server = embedded_redis(settings)
            await asyncio.to_thread(server.start)
            stack.callback(server.stop)
            log.info("embedded Redis at %s (data in %s)", server.url, server.data_dir)
        address = settings.metrics_host_port
        if address is not None:
            host, port = metrics.start_http_server(*address)
            stack.callback(metrics.stop)
            log.info("metrics on http://%s:%d/metrics", host, port)
        lnd = LndClient(endpoint, on_rpc=metrics.observe_rpc)
        stack.push_async_callback(lnd.close)
        info = await _wait_for_lnd(lnd, stop)
        if info is None:
            return
        store = Store.from_url(redis_url_for(settings), info, limits_for(settings))
        stack.push_async_callback(store.aclose)
        notifier = None
        if settings.notify_url:
            assert settings.notify_secret is not None
            notifier = Notifier(
                settings.notify_url,
                settings.notify_secret.encode(),
                timeout=settings.notify_timeout,
                give_up_after=settings.notify_give_up,
                on_failure=lambda reason: metrics.notify_failed.inc(),
            )
            stack.enter_context(_background(notifier.run(), stop))
            # Unwound first: what is queued gets a moment to go out before the worker stops.
            stack.push_async_callback(functools.partial(notifier.aclose, drain=2.0))
        async with _node_lock(store, stop):
            if stop.is_set():
                return
            mailbox = Mailbox(
                lnd=lnd,
                store=store,
                metrics=metrics,
                notifier=notifier,
                options=MailboxOptions(
                    transport=settings.transport,
                    allow_channel_peers=settings.allow_channel_peers,
                    race_window=settings.race_window,
                    sweep_interval=settings.sweep_interval,
                    buffer_messages=settings.buffer_messages,
                ),
            )
            await mailbox.run(stop)


async def _hold_datadir(
    datadir: Path, stack: contextlib.AsyncExitStack, stop: asyncio.Event
) -> bool:
    """Waits until no other daemon uses ``datadir``, then holds it until the stack unwinds.
    The embedded Redis in it belongs to one daemon: a second one would take the running
    server over and shut it down under the first when it stops. False if stopped first."""
    lock = DirectoryLock(datadir / "lndmailbox.lock")
    logged = False
    while not _try_datadir_lock(lock):
        if not logged:
            log.warning(
                "another lndmailbox (pid %s) uses %s; waiting for it to stop",
                lock.holder() or "unknown",
                datadir,
            )
            logged = True
        if await sleep_or_stop(stop, 1.0):
            return False
    stack.callback(lock.release)
    return True


def _try_datadir_lock(lock: DirectoryLock) -> bool:
    try:
        return lock.try_acquire()
    except OSError as e:  # a read-only or lock-less file system, say
        raise ConfigError(f"cannot lock the data directory ({lock.path}): {e}") from e


async def _wait_for_lnd(lnd: LndClient, stop: asyncio.Event) -> bytes | None:
    """The node's pubkey, once lnd answers; retryable errors are waited out."""
    logged = False
    while not stop.is_set():
        try:
            info = await lnd.get_info()
        except LndError as e:
            if not e.retryable:
                raise
            if not logged:
                log.warning("waiting for lnd: %s", e)
                logged = True
            await sleep_or_stop(stop, 2.0)
            continue
        return info.pubkey
    return None


@contextlib.asynccontextmanager
async def _node_lock(store: Store, stop: asyncio.Event) -> AsyncIterator[None]:
    """Holds the node's lock (renewed, with a heartbeat) for as long as the block runs."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    said = False
    while not stop.is_set() and not await _try_lock(store, owner, stop):
        holder = await store.lock_owner()
        if holder is not None and _died_on_this_host(holder):
            log.warning("taking over the node lock from %s, which is no longer running", holder)
            await store.release_lock(holder)
            continue
        if not said:
            heartbeat = await store.read_heartbeat()
            log.warning(
                "another lndmailbox (%s) holds this node's lock; waiting for it to stop "
                "or for its lease to run out (last heartbeat: %s)",
                holder,
                heartbeat or "none",
            )
            said = True
        await sleep_or_stop(stop, 2.0)
    if stop.is_set():
        yield
        return
    started = time.time()
    lost = asyncio.Event()

    async def keep_lease() -> None:
        while not await sleep_or_stop(stop, HEARTBEAT_INTERVAL):
            try:
                if not await store.renew_lock(owner, LOCK_LEASE):
                    log.error("lost the node lock to another daemon; stopping")
                    lost.set()
                    stop.set()
                    return
                await store.heartbeat(
                    {
                        "owner": owner,
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "version": __version__,
                        "started_at": started,
                        "at": time.time(),
                    },
                    ttl=LOCK_LEASE,
                )
            except MailboxError as e:
                log.warning("could not renew the node lock: %s", e)

    with _background(keep_lease(), stop):
        try:
            yield
        finally:
            if not lost.is_set():
                with contextlib.suppress(MailboxError):
                    await store.release_lock(owner)


async def _try_lock(store: Store, owner: str, stop: asyncio.Event) -> bool:
    """One try at the node lock; while Redis cannot be reached, waits for it (saying so once)."""
    said = False
    while not stop.is_set():
        try:
            return await store.acquire_lock(owner, LOCK_LEASE)
        except StoreUnavailableError as e:
            if not said:
                log.warning("waiting for Redis: %s", e)
                said = True
            await sleep_or_stop(stop, 2.0)
    return False


def _died_on_this_host(owner: str) -> bool:
    """Whether the lock's owner ("host:pid:nonce") was a process of this host that is gone.

    Without this a daemon restarted after a crash would wait out the whole lease.
    """
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def _background(coro: Coroutine[Any, Any, None], stop: asyncio.Event) -> Iterator[None]:
    """Runs ``coro`` as a task for the duration of the block; if it dies, the daemon stops."""
    task = asyncio.ensure_future(coro)

    def died(done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("a background task failed; stopping", exc_info=done.exception())
            stop.set()

    task.add_done_callback(died)
    try:
        yield
    finally:
        task.remove_done_callback(died)
        task.cancel()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
