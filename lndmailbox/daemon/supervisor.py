"""How the daemon's long-running tasks are started, watched and stopped.

Every task runs until it is stopped, so one that ends early is a failure even without an
error: the daemon stops rather than run on with a part missing. Stopping is bounded: a
task that does not end in time is named in the log, with where it hangs, and left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, Protocol

from lndmailbox.errors import LndCredentialsError, LndError, MailboxError, StoreError

log = logging.getLogger(__name__)

CANCEL_WITHIN = 5.0
"""Seconds a cancelled task gets to end before it is reported as hanging."""


class Stoppable(Protocol):
    """A long-running task of the daemon: :meth:`run` returns once ``stop`` is set."""

    async def run(self, stop: asyncio.Event) -> None: ...


def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(coro, name=name)


RECANCEL_EVERY = 0.1
"""Seconds between the cancellations of a task that goes on after one (see
:func:`cancel_for_good`)."""


async def run_until_stopped(stop: asyncio.Event, coro: Coroutine[Any, Any, None]) -> None:
    """Runs ``coro`` until it ends or ``stop`` is set (then cancels it for good)."""
    task = asyncio.ensure_future(coro)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        await cancel_for_good(task)
    if task.done() and not task.cancelled():
        task.result()


async def cancel_for_good(task: asyncio.Future[Any], within: float = CANCEL_WITHIN) -> None:
    """Cancels ``task``, again every :data:`RECANCEL_EVERY` seconds, until it ends or
    ``within`` seconds have passed (then it is left behind, as :func:`cancel` does).

    One cancellation is not always enough: Python 3.11's ``asyncio.wait_for`` (redis-py
    waits on its socket writes with it) loses a cancellation that arrives just as the call
    it waits for completes, and the task then runs on (seen as a peer follower stuck on
    lnd's stream after a failed start). For the loops of the services only, whose
    cancellation has nothing to finish. Being cancelled meanwhile is passed on once the
    task has ended.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    cancelled = False
    while not task.done() and loop.time() < deadline:
        task.cancel()
        try:
            await asyncio.wait([task], timeout=RECANCEL_EVERY)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def until_stop_or_failure(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Waits for ``stop``; a task that ends first takes the daemon down with it."""
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


async def cancel(
    tasks: list[asyncio.Task[None]], within: float = CANCEL_WITHIN
) -> list[MailboxError]:
    """Cancels ``tasks`` and waits up to ``within`` seconds for them to end.

    Returns what the tasks failed with, beyond lnd or Redis being away (which is logged
    as a warning): a bug must not vanish in a shutdown, the daemon exits non-zero on it.
    lnd refusing the macaroon is returned as it is, unlogged: it is the reason the daemon
    stops, and the caller says it once.
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
    failures: list[MailboxError] = []
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is None:
            continue
        if isinstance(error, LndCredentialsError):
            failures.append(error)
            continue
        if isinstance(error, LndError | StoreError):
            log.warning("%s", error)
            continue
        log.error("task %s failed while stopping", task.get_name(), exc_info=error)
        failure = MailboxError(f"the {task.get_name()} task failed while stopping: {error!r}")
        failure.__cause__ = error
        failures.append(failure)
    return failures


async def finish(task: asyncio.Task[None], within: float) -> list[MailboxError]:
    """Waits up to ``within`` seconds for ``task`` to end by itself, then cancels it;
    returns what it failed with (see :func:`cancel`)."""
    await asyncio.wait([task], timeout=within)
    return await cancel([task])


@contextlib.contextmanager
def background(coro: Coroutine[Any, Any, None], stop: asyncio.Event) -> Iterator[None]:
    """Runs ``coro`` as a task for the duration of the block; if it dies, the daemon stops,
    and the block's end raises what it died of (a stop caused by a fault exits non-zero)."""
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
    error = task.exception() if task.done() and not task.cancelled() else None
    if error is not None:
        raise MailboxError(f"a background task failed: {error!r}") from error
