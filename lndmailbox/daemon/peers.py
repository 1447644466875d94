"""What the daemon knows about lnd's peers: who is online, which channel leads to whom, and
(native transport) which channels lnd cannot forward to by their aliases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from lndmailbox.clock import Clock
from lndmailbox.daemon.supervisor import run_until_stopped
from lndmailbox.errors import LndCredentialsError, LndError
from lndmailbox.lnd import Channel, ChannelIndex, UnresolvableAliases, unresolvable_aliases
from lndmailbox.lnd.resolver import describe_unresolvable
from lndmailbox.retry import wait_or_stop

log = logging.getLogger(__name__)


class PeerTracker:
    """The set of peers lnd is connected to, as far as its events have told us.

    lnd's peer event stream does not replay the current state, so the set is rebuilt from
    ``ListPeers`` at start and after every resubscription (:meth:`reset`); between those,
    events update it. ``offline_since`` remembers when each peer was last seen leaving,
    which the native transport's race guard needs; ``online_since`` when each online peer
    was seen coming (a PEER_ONLINE, or a resync that found it new), which the native
    transport's decision needs: a peer that came back only just now may have been away when
    lnd tried to forward (:meth:`RaceGuard.lnd_could_forward
    <lndmailbox.daemon.race_guard.RaceGuard.lnd_could_forward>`). Both on
    ``clock.monotonic()``, the clock of the message reader's stamps.

    A resync makes every online peer come now, also one online in both views: a peer that
    went and came back while our peer event stream was down is not told apart from one that
    stayed (ListPeers says nothing of when a peer connected).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._online_since: dict[bytes, float] = {}
        self._offline_since: dict[bytes, float] = {}
        self._blind = False

    def is_online(self, peer: bytes) -> bool:
        return peer in self._online_since

    @property
    def online(self) -> frozenset[bytes]:
        return frozenset(self._online_since)

    def online_since(self, peer: bytes) -> float | None:
        """Monotonic time the peer was seen coming online, if it is online and lnd's peer
        events are followed (None while they are broken: the view may be stale)."""
        if self._blind:
            return None
        return self._online_since.get(peer)

    def lost_sight(self) -> None:
        """lnd's peer events broke: :meth:`online_since` knows nothing until :meth:`reset`."""
        self._blind = True

    def offline_since(self, peer: bytes) -> float | None:
        """Monotonic time the peer was last seen going offline, if it is offline."""
        return None if peer in self._online_since else self._offline_since.get(peer)

    def mark(self, peer: bytes, online: bool) -> bool:
        """Applies one event; returns whether it changed anything."""
        if online:
            if peer in self._online_since:
                return False
            self._online_since[peer] = self._clock.monotonic()
            self._offline_since.pop(peer, None)
            return True
        if self._online_since.pop(peer, None) is None:
            return False
        self._offline_since[peer] = self._clock.monotonic()
        return True

    def reset(self, online: Iterable[bytes]) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """Replaces the set with lnd's; returns (came online, went offline) since our view.

        Every peer online now counts as come now, also one online in both views: while
        lnd's peer events were away it may have left and come back unseen (an lnd restart
        that the peers reconnected to before this ListPeers), and a message lnd failed to
        forward to it then must not be left to lnd.
        """
        self._blind = False
        now_online = set(online)
        came = frozenset(now_online - self._online_since.keys())
        went = frozenset(self._online_since.keys() - now_online)
        now = self._clock.monotonic()
        for peer in went:
            del self._online_since[peer]
            self._offline_since[peer] = now
        for peer in now_online:
            self._online_since[peer] = now
            self._offline_since.pop(peer, None)
        return came, went


class ChannelSource(Protocol):
    """Where the channels come from (:meth:`lndmailbox.lnd.LndClient.channel_index`)."""

    async def channel_index(self) -> ChannelIndex:
        """The channels, and short_channel_id (real and alias) -> the peer at the other end."""
        ...


class ChannelMap:
    """short_channel_id (real or alias) -> the peer at the other end, from lnd's channels.

    Reloaded when a lookup misses, at most once per ``min_refresh`` seconds and one load at
    a time (a failed load counts too), so that a peer sending made-up channel ids cannot
    turn every message into a ListChannels call.
    """

    def __init__(self, source: ChannelSource, clock: Clock, *, min_refresh: float = 2.0) -> None:
        self._source = source
        self._clock = clock
        self._min_refresh = min_refresh
        self._by_scid: Mapping[int, bytes] = {}
        self._peers: frozenset[bytes] = frozenset()
        self._tried_at: float | None = None
        self._lock = asyncio.Lock()

    async def _reload(self) -> None:
        self._tried_at = self._clock.monotonic()
        self._by_scid = (await self._source.channel_index()).peers_by_scid
        self._peers = frozenset(self._by_scid.values())

    async def _refresh_if_stale(self) -> None:
        tried = self._tried_at
        if self._lock.locked():
            async with self._lock:  # a load is under way: its answer is the one to use
                return
        if tried is not None and self._clock.monotonic() - tried < self._min_refresh:
            return
        async with self._lock:
            if self._tried_at == tried:  # nobody reloaded while we waited for the lock
                await self._reload()

    async def peer_for(self, scid: int) -> bytes | None:
        peer = self._by_scid.get(scid)
        if peer is None:
            await self._refresh_if_stale()
            peer = self._by_scid.get(scid)
        return peer

    async def has_channel(self, peer: bytes) -> bool:
        if peer not in self._peers:
            await self._refresh_if_stale()
        return peer in self._peers

    async def channel_peers(self) -> frozenset[bytes]:
        """Every peer with a channel, read from lnd now (the map too)."""
        async with self._lock:
            await self._reload()
        return self._peers


class AliasWarning:
    """Tells the operator, on the native transport, about private channels whose SCID
    aliases lnd cannot forward an onion message by
    (:func:`lndmailbox.lnd.unresolvable_aliases`): a message naming one is dropped inside
    lnd and never reaches the mailbox.

    One WARNING for the channels of the first list it sees, and one again whenever a later
    list gives a different set (INFO once none is left).
    """

    def __init__(self) -> None:
        self._last: frozenset[UnresolvableAliases] | None = None

    def saw(self, channels: Sequence[Channel]) -> None:
        found = unresolvable_aliases(channels)
        now = frozenset(found)
        first, changed = self._last is None, now != self._last
        self._last = now
        if not changed:
            return
        if found:
            log.warning("%s", describe_unresolvable(found))
        elif not first:
            log.info("every private channel's SCID aliases resolve in lnd now")


ALIAS_CHECK_INTERVAL = 600.0
"""Seconds between two of :class:`AliasCheck`'s looks at lnd's channels. Not a setting: a
channel opened meanwhile is named within 10 minutes, soon enough for what the operator
does about it (open phones' channels another way), and one ListChannels per 10 minutes
costs lnd nothing. Tests shorten it through ``MailboxOptions``."""


class ChannelLister(Protocol):
    """Where :class:`AliasCheck` reads the channels
    (:meth:`lndmailbox.lnd.LndClient.list_channels`)."""

    async def list_channels(self) -> tuple[Channel, ...]: ...


class AliasCheck:
    """A task of the native transport: lists lnd's channels at start and every ``interval``
    seconds, and hands each list to an :class:`AliasWarning`.

    Nothing else on that transport is sure to list them again (only the lookups of
    ``--allow-channel-peers`` do, on a miss): lnd resolves the next hops itself, so a
    message naming an alias it cannot resolve is dropped inside lnd and causes no lookup
    here. The task runs beside lnd's streams and never holds them up (lnd keeps no backlog
    for a late subscriber). lnd refusing the macaroon ends it with the
    :class:`~lndmailbox.errors.LndCredentialsError`, which stops the daemon (exit 1) as any
    other refused call does; lnd failing otherwise is logged, and the next look tries again.
    """

    def __init__(self, lnd: ChannelLister, *, interval: float = ALIAS_CHECK_INTERVAL) -> None:
        self._lnd = lnd
        self._interval = interval
        self._warning = AliasWarning()

    async def run(self, stop: asyncio.Event) -> None:
        await run_until_stopped(stop, self._check_every_interval(stop))

    async def _check_every_interval(self, stop: asyncio.Event) -> None:
        while True:
            await self.check()
            if await wait_or_stop(stop, self._interval):
                return

    async def check(self) -> None:
        try:
            channels = await self._lnd.list_channels()
        except LndCredentialsError:
            raise
        except LndError as e:
            log.warning("could not list lnd's channels to check their SCID aliases: %s", e)
            return
        self._warning.saw(channels)
