"""What the daemon knows about lnd's peers: who is online, and which channel leads to whom."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from lndmailbox.clock import Clock
from lndmailbox.lnd import Channel, ChannelIndex, UnresolvableAliases, unresolvable_aliases
from lndmailbox.onion.tlv import format_scid

log = logging.getLogger(__name__)


class PeerTracker:
    """The set of peers lnd is connected to, as far as its events have told us.

    lnd's peer event stream does not replay the current state, so the set is rebuilt from
    ``ListPeers`` at start and after every resubscription (:meth:`reset`); between those,
    events update it. ``offline_since`` remembers when each peer was last seen leaving,
    which the native transport's race guard needs.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._online: set[bytes] = set()
        self._offline_since: dict[bytes, float] = {}

    def is_online(self, peer: bytes) -> bool:
        return peer in self._online

    @property
    def online(self) -> frozenset[bytes]:
        return frozenset(self._online)

    def offline_since(self, peer: bytes) -> float | None:
        """Monotonic time the peer was last seen going offline, if it is offline."""
        return None if peer in self._online else self._offline_since.get(peer)

    def mark(self, peer: bytes, online: bool) -> bool:
        """Applies one event; returns whether it changed anything."""
        if online:
            if peer in self._online:
                return False
            self._online.add(peer)
            self._offline_since.pop(peer, None)
            return True
        if peer not in self._online:
            return False
        self._online.discard(peer)
        self._offline_since[peer] = self._clock.monotonic()
        return True

    def reset(self, online: Iterable[bytes]) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """Replaces the set with lnd's; returns (came online, went offline) since our view."""
        now_online = set(online)
        came = frozenset(now_online - self._online)
        went = frozenset(self._online - now_online)
        for peer in went:
            self._offline_since[peer] = self._clock.monotonic()
        for peer in came:
            self._offline_since.pop(peer, None)
        self._online = now_online
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
    turn every message into a ListChannels call. ``on_load`` sees the channels of every
    load (the native transport's :class:`AliasWarning`).
    """

    def __init__(
        self,
        source: ChannelSource,
        clock: Clock,
        *,
        min_refresh: float = 2.0,
        on_load: Callable[[Sequence[Channel]], None] | None = None,
    ) -> None:
        self._source = source
        self._clock = clock
        self._min_refresh = min_refresh
        self._on_load = on_load
        self._by_scid: Mapping[int, bytes] = {}
        self._peers: frozenset[bytes] = frozenset()
        self._tried_at: float | None = None
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Loads the map now (the daemon's start, on the native transport)."""
        async with self._lock:
            await self._reload()

    async def _reload(self) -> None:
        self._tried_at = self._clock.monotonic()
        index = await self._source.channel_index()
        self._by_scid = index.peers_by_scid
        self._peers = frozenset(self._by_scid.values())
        if self._on_load is not None:
            self._on_load(index.channels)

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


class AliasWarning:
    """Tells the operator, on the native transport, about channels whose SCID aliases lnd
    cannot forward an onion message by (:func:`lndmailbox.lnd.unresolvable_aliases`): a
    message naming one is dropped inside lnd and never reaches the mailbox.

    One WARNING for the channels of the first load, and one again whenever a later load
    finds a different set (INFO once none is left).
    """

    _SHOWN = 3
    """Channels named in the line; the rest are counted."""

    def __init__(self) -> None:
        self._last: frozenset[UnresolvableAliases] | None = None

    def saw(self, channels: Sequence[Channel]) -> None:
        found = unresolvable_aliases(channels)
        now = frozenset(found)
        first, changed = self._last is None, now != self._last
        self._last = now
        if not changed:
            return
        if not found:
            if not first:
                log.info("every channel's SCID aliases resolve in lnd now")
            return
        named = ", ".join(
            f"{c.peer.hex()} {' '.join(format_scid(a) for a in c.aliases)}"
            for c in found[: self._SHOWN]
        )
        more = len(found) - self._SHOWN
        peers = len({c.peer for c in found})
        log.warning(
            "%d channel%s (%d peer%s) with SCID aliases lnd cannot resolve: %s%s; onion "
            "messages naming these aliases (LDK phones' blinded paths) are dropped by lnd "
            "before the mailbox sees them: open phones zero-conf scid-alias channels",
            len(found),
            "" if len(found) == 1 else "s",
            peers,
            "" if peers == 1 else "s",
            named,
            f" and {more} more" if more > 0 else "",
        )
