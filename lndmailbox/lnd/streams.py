"""lnd's server streams, subscribed again whenever they break, as lndmailbox's own values.

:meth:`LndClient.peer_events <lndmailbox.lnd.LndClient.peer_events>`,
:meth:`LndClient.onion_messages <lndmailbox.lnd.LndClient.onion_messages>` and
:meth:`LndClient.lsps_messages <lndmailbox.lnd.LndClient.lsps_messages>` return a
:class:`Subscription`: it subscribes on first use, and when the stream breaks (lnd
stopped, restarted, unreachable) :class:`Resubscriber` subscribes again, forever, with
:class:`~lndmailbox.retry.Backoff`; the client's :class:`~lndmailbox.retry.Outage` says
once that lnd is failing and once that it is back. The first item after every
re-established subscription (not after the first one) is
:class:`~lndmailbox.lnd.values.Resubscribed`, so the caller re-reads state it may have
missed (ListPeers). Errors that retrying cannot fix (a macaroon without the permission, an
lnd without the RPC) end the stream by raising, and so does a break once the daemon's stop
is set (no backoff is sat out then). A caller that must know at once that an accepted
subscription broke (nothing it says is news until the next :class:`Resubscribed`) passes
``on_break`` to :class:`Subscription`: it is called when the break is seen, before the
backoff.

A stream given a :class:`QuietMark` also tells how stale each item may be
(:attr:`Subscription.lag`): see :class:`QuietMark` for how a read that had to wait for
lnd is told from one that found data gRPC already held.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from lndmailbox.errors import LndError, OnionError
from lndmailbox.lnd.errors import rpc_error
from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.lnd.values import (
    IncomingLspsMessage,
    IncomingMalformed,
    IncomingOnionMessage,
    PeerEvent,
    Resubscribed,
)
from lndmailbox.lsps import LSPS_MESSAGE_TYPE
from lndmailbox.onion.wire import ONION_MESSAGE_TYPE, OnionMessage
from lndmailbox.retry import Backoff, Outage, wait_or_stop

__all__ = [
    "Broke",
    "Opened",
    "QuietMark",
    "Resubscriber",
    "Subscription",
    "custom_messages",
    "lsps_messages",
    "native_onion_messages",
    "peer_events",
]

_Resp = TypeVar("_Resp")
_Item = TypeVar("_Item")

QUIET_PROOF_SECONDS = 0.02
"""The shortest window a read must stay pending through to count as having waited."""
QUIET_PROOF_TURNS = 16
"""Turns of the event loop a read must stay pending for after its window too."""
QUIET_WINDOW_LONGEST = 0.25
"""A long wait is proven again window after window, each twice the one before, up to this."""


@dataclass(frozen=True)
class Opened:
    """Marker inside the package: a stream subscription was (re)established."""


@dataclass(frozen=True)
class Broke:
    """Marker inside the package: a subscription that was established broke (lnd ended it,
    or the connection went); a new one is tried after the backoff."""


Marker = Opened | Broke


class QuietMark:
    """The latest moment (``time.monotonic()``) at which lnd's stream was known to hold
    nothing for us: everything read afterwards was published by lnd after it (up to the
    time lnd's own sending and the network take, which is what ``--race-window`` covers).

    It is set when a subscription is opened (lnd keeps no backlog for a new subscriber, so
    nothing on it predates the call) and at the start of every read that had to wait for
    lnd: a read that found nothing buffered means lnd had published everything before it.
    A read is issued when the caller asks for the next item, so what lnd sent while the
    caller was busy (the decision queue full) is buffered by gRPC, up to its read-ahead,
    and found at once by the next read: that read does not move the mark, and the lag grows
    with the backlog.

    The test of "had to wait": the read stayed pending through a window of at least
    :data:`QUIET_PROOF_SECONDS` and then :data:`QUIET_PROOF_TURNS` more turns of the event
    loop. Neither half is enough alone, nor is a simpler test:

    - "the read suspended": every read does (each is a task awaiting gRPC's completion
      queue, which a poller thread feeds), buffered data or not;
    - a time alone: with 64 decider workers busy, one turn of the loop can take tens of
      milliseconds, so a read of data gRPC already held can take hundreds (measured: 0.26 s
      median with 64 tasks busy 1 ms per turn) and would pass for a wait, while that data
      may be seconds old: the one mistake that can lose a message;
    - turns alone: on an idle loop a turn takes microseconds, fewer than gRPC's poller
      thread needs to post a completion (measured: up to 244 turns, in 0.7 ms).

    Measured on simnet (600 reads of buffered data each, idle, with 8 or 64 tasks busy 1 ms
    per turn, 4 busy 20 ms, and three processes hogging both cores): buffered reads were
    done within 0.7 ms idle and within 5 turns loaded, so none passed 20 ms and 8 turns
    (16 are asked for: the margin costs a real wait nothing); 5 ms and 2 turns let 3 in
    600 pass. The error left is one-sided: a real wait too short
    to prove (a message every few ms) leaves the mark at the last proof, earlier than need
    be, which costs duplicates, never a message. A wait that lasts is proven again each
    window (doubling up to :data:`QUIET_WINDOW_LONGEST`), so after a quiet spell the mark
    is the start of the last proven window: up to about twice that old (plus the turns)
    when the next message comes.

    What it cannot see is a backlog still in lnd beyond gRPC's read-ahead (lnd's
    subscriber queue is unbounded, and HTTP/2 flow control holds the rest there): once the
    buffer is empty, the next data needs a window update and lnd's write, which on a
    remote lnd may take longer than the proof. Such a backlog is seconds old only when the
    decider fell seconds behind, which the decision queue's bound and the in-flight cap
    keep rare; ``--race-window`` is the margin for it.
    """

    def __init__(self) -> None:
        self.at: float | None = None

    def saw_quiet(self, at: float) -> None:
        if self.at is None or at > self.at:
            self.at = at

    async def watch(self, read: asyncio.Future[Any], started: float) -> None:
        """Moves the mark while ``read`` (issued at ``started``) stays pending; returns
        once it is done, or cancelled with it."""
        window = QUIET_PROOF_SECONDS
        while await _still_pending(read, started + window - time.monotonic()):
            self.saw_quiet(started)
            started = time.monotonic()
            window = min(window * 2, QUIET_WINDOW_LONGEST)


async def _still_pending(read: asyncio.Future[Any], seconds: float) -> bool:
    """Whether ``read`` is still pending after ``seconds`` and :data:`QUIET_PROOF_TURNS`
    more turns of the event loop (the read itself is left alone)."""
    if seconds > 0:
        await asyncio.wait({read}, timeout=seconds)
    for _ in range(QUIET_PROOF_TURNS):
        if read.done():
            return False
        await asyncio.sleep(0)
    return not read.done()


async def _next_or_none(items: AsyncIterator[_Item]) -> _Item | None:
    """The next item, or None at the end (a Task must not raise StopAsyncIteration)."""
    return await anext(items, None)


class Subscription(AsyncIterator[_Item | Resubscribed]):
    """A stream from lnd that survives lnd restarts.

    Iterating it yields the stream's items, and :class:`Resubscribed` first after every
    re-established subscription. ``on_break``, if given, is called (while iterating, with
    nothing yielded) as soon as an established subscription is seen broken: from then
    until the next :class:`Resubscribed` the stream says nothing of what happens.
    :meth:`wait_subscribed` opens the first subscription without consuming an item: await
    it, then read the state the stream reports changes of (ListPeers), and no change falls
    between the two. (lnd answers a subscription with nothing until its first item, so
    "accepted" means: connected, and not refused within the client's ``settle`` time.)
    :meth:`aclose` cancels the call.
    """

    def __init__(
        self,
        source: AsyncGenerator[_Item | Marker, None],
        quiet: QuietMark | None = None,
        on_break: Callable[[], None] | None = None,
    ) -> None:
        self._source = source
        self._opened = False
        self._quiet = quiet
        self._on_break = on_break
        self.lag: float | None = None
        """For the item just handed over: how many seconds before it lnd's stream was last
        known to hold nothing for us (its :class:`QuietMark`); None without a mark."""

    async def wait_subscribed(self) -> None:
        """Return once lnd has accepted the first subscription (idempotent).

        Raises like iterating would (a missing permission); keeps waiting, retrying with
        backoff, while lnd is unreachable.
        """
        if self._opened:
            return
        item = await anext(self._source)
        if not isinstance(item, Opened):  # pragma: no cover - the source always opens first
            raise AssertionError("a subscription's first item must be Opened")
        self._opened = True

    def __aiter__(self) -> Subscription[_Item]:
        return self

    async def __anext__(self) -> _Item | Resubscribed:
        while True:
            item = await anext(self._source)
            if isinstance(item, Broke):
                if self._on_break is not None:
                    self._on_break()
                continue
            if isinstance(item, Opened):
                if not self._opened:
                    self._opened = True
                    continue
                self._measure_lag()
                return Resubscribed()
            self._measure_lag()
            return item

    def quiet_for(self) -> float | None:
        """Seconds since lnd's stream was last known to hold nothing for us, now (the
        :class:`QuietMark`, moved while a read waits); None without a mark."""
        quiet = None if self._quiet is None else self._quiet.at
        return None if quiet is None else max(time.monotonic() - quiet, 0.0)

    def _measure_lag(self) -> None:
        self.lag = self.quiet_for()

    async def aclose(self) -> None:
        await self._source.aclose()


class Resubscriber:
    """Subscribes to a stream of lnd's, and again with backoff whenever it breaks.

    ``closed()`` says the client was closed (the stream then ends quietly); ``ready()``
    that the gRPC channel is connected; ``settle`` is how long a new subscription must go
    unrefused before it counts as accepted; ``macaroon`` names the macaroon in errors;
    ``stop`` (the daemon's) ends the backoff between subscriptions at once: the stream then
    raises its last error instead of subscribing again.
    """

    def __init__(
        self,
        *,
        backoff: Backoff,
        outage: Outage,
        settle: float,
        closed: Callable[[], bool],
        ready: Callable[[], bool],
        macaroon: str = "the macaroon",
        stop: asyncio.Event | None = None,
    ) -> None:
        self._stop = stop
        self._macaroon = macaroon
        self._backoff = backoff
        self._outage = outage
        self._settle = settle
        self._closed = closed
        self._ready = ready

    async def items(
        self,
        rpc: str,
        open_call: Callable[[], grpc.aio.UnaryStreamCall[Any, _Resp]],
        quiet: QuietMark | None = None,
    ) -> AsyncGenerator[_Resp | Marker, None]:
        """The raw items of a stream, subscribed again with backoff whenever it breaks.

        Yields :class:`Opened` once per subscription that lnd accepted: when its first item
        arrives, or once the connection is up and lnd has not refused the call within
        ``settle`` seconds (lnd sends no response headers before the first item, so there
        is nothing earlier to wait for; a refusal, such as a missing permission or "wallet
        locked", comes back at once). The backoff restarts once a subscription delivered an
        item or stayed up for ``backoff.maximum`` seconds. Yields :class:`Broke` when a
        subscription it announced breaks, before the backoff. ``quiet``, if given, is moved
        as its docstring says.
        """
        failures = 0
        while not self._closed():
            opened_at = time.monotonic()
            call = open_call()
            items = aiter(call)
            pending: asyncio.Task[_Resp | None] | None = None
            if quiet is not None:
                quiet.saw_quiet(opened_at)
            announced = healthy = False
            error = LndError(f"{rpc}: lnd ended the stream", rpc=rpc, code="OK", retryable=True)
            try:
                while True:
                    started = time.monotonic()
                    pending = asyncio.create_task(_next_or_none(items))
                    if not announced and await self._accepted(pending):
                        announced = True
                        self._outage.recovered()
                        yield Opened()
                    if quiet is not None:
                        await quiet.watch(pending, started)
                    item = await pending
                    pending = None
                    if item is None:  # lnd ended the stream without an error
                        break
                    healthy = True
                    yield item
            except grpc.aio.AioRpcError as e:
                if self._closed():
                    return
                error = rpc_error(rpc, e, macaroon=self._macaroon)
                if not error.retryable:
                    raise error from e
            except asyncio.CancelledError:
                # Closing the channel cancels the read inside grpc; a cancellation of the
                # task iterating this stream goes on up.
                task = asyncio.current_task()
                if self._closed() and task is not None and task.cancelling() == 0:
                    return
                raise
            finally:
                if pending is not None and not pending.done():
                    pending.cancel()
                call.cancel()
            if self._closed():
                return
            if healthy or time.monotonic() - opened_at >= self._backoff.maximum:
                failures = 0
            failures += 1
            self._outage.failed(error)
            if announced:
                yield Broke()
            if await wait_or_stop(self._stop, self._backoff.delay(failures)):
                raise error

    async def _accepted(self, pending: asyncio.Task[Any]) -> bool:
        """Whether lnd accepted the subscription whose first read is ``pending``.

        Waits until the first item (or the end) arrives, or the channel is connected and
        ``settle`` seconds passed without a refusal.
        """
        while True:
            done, _ = await asyncio.wait({pending}, timeout=self._settle)
            if done or self._ready():
                break
        return not pending.done() or pending.exception() is None


# --- lnd's items as lndmailbox's values ----------------------------------------------------


def peer_events(
    raw: AsyncGenerator[ln.PeerEvent | Marker, None],
) -> AsyncGenerator[PeerEvent | Marker, None]:
    """SubscribePeerEvents' items as :class:`PeerEvent`."""
    return _converted(raw, _peer_event)


def native_onion_messages(
    raw: AsyncGenerator[ln.OnionMessageUpdate | Marker, None],
) -> AsyncGenerator[IncomingOnionMessage | IncomingMalformed | Marker, None]:
    """SubscribeOnionMessages' items as :class:`IncomingOnionMessage`."""
    return _converted(raw, _native_onion_message)


def custom_messages(
    raw: AsyncGenerator[ln.CustomMessage | Marker, None],
) -> AsyncGenerator[IncomingOnionMessage | IncomingMalformed | IncomingLspsMessage | Marker, None]:
    """SubscribeCustomMessages' items routed by type, for the custom transport: 513 as
    :class:`IncomingOnionMessage` (a body that does not decode as
    :class:`IncomingMalformed`), 37913 as :class:`IncomingLspsMessage`; other types dropped.

    lnd has one custom message stream, so the reader of onion messages reads LSPS0 too:
    a second subscription would be a second copy of every onion message for lnd to send.
    """
    return _converted(raw, _custom_message)


def lsps_messages(
    raw: AsyncGenerator[ln.CustomMessage | Marker, None],
) -> AsyncGenerator[IncomingLspsMessage | Marker, None]:
    """SubscribeCustomMessages' type-37913 items as :class:`IncomingLspsMessage`, other
    types dropped: the native transport's LSPS0 stream (its onion messages come on
    SubscribeOnionMessages)."""
    return _converted(raw, _lsps_message)


async def _converted(
    raw: AsyncGenerator[_Resp | Marker, None], convert: Callable[[_Resp], _Item | None]
) -> AsyncGenerator[_Item | Marker, None]:
    """``raw`` with each item converted (None: dropped), the markers kept."""
    try:
        async for item in raw:
            if isinstance(item, Opened | Broke):
                yield item
            else:
                value = convert(item)
                if value is not None:
                    yield value
    finally:
        await raw.aclose()


def _peer_event(item: ln.PeerEvent) -> PeerEvent:
    return PeerEvent(bytes.fromhex(item.pub_key), item.type == ln.PeerEvent.EventType.PEER_ONLINE)


def _native_onion_message(item: ln.OnionMessageUpdate) -> IncomingOnionMessage:
    return IncomingOnionMessage(item.peer, item.path_key, item.onion, item.encrypted_recipient_data)


def _lsps_message(item: ln.CustomMessage) -> IncomingLspsMessage | None:
    if item.type != LSPS_MESSAGE_TYPE:
        return None
    return IncomingLspsMessage(item.peer, item.data)


def _custom_message(
    item: ln.CustomMessage,
) -> IncomingOnionMessage | IncomingMalformed | IncomingLspsMessage | None:
    if item.type == LSPS_MESSAGE_TYPE:
        return _lsps_message(item)
    if item.type != ONION_MESSAGE_TYPE:
        return None
    try:
        message = OnionMessage.decode(item.data)
    except OnionError as e:
        return IncomingMalformed(item.peer, item.data, e)
    return IncomingOnionMessage(item.peer, message.path_key, message.onion)
