"""Who the mailbox keeps mail for: never arbitrary nodes.

A peer is allowed when it is on the allowlist kept in Redis (``mailboxctl allow add``),
or, with ``allow_channel_peers``, when it has a channel with the node. The allowlist is
read from Redis at most every ``refresh`` seconds, and the last copy read is used while
Redis is unreachable, so the decider neither waits on Redis per message nor stops when it is
down.
"""

from __future__ import annotations

import logging

from lndmailbox.clock import Clock
from lndmailbox.daemon.peers import ChannelMap
from lndmailbox.errors import LndCredentialsError, LndError, StoreError
from lndmailbox.store import Allowlist

log = logging.getLogger(__name__)


class Policy:
    def __init__(
        self,
        *,
        allowlist: Allowlist,
        channels: ChannelMap,
        clock: Clock,
        allow_channel_peers: bool,
        refresh: float = 2.0,
    ) -> None:
        self._allowlist_in_redis = allowlist
        self._channels = channels
        self._clock = clock
        self._allow_channel_peers = allow_channel_peers
        self._refresh = refresh
        self._allowlist: frozenset[bytes] = frozenset()
        self._read_at: float | None = None

    async def is_allowed(self, peer: bytes) -> bool:
        if peer in self._allowlist:
            return True
        if self._read_at is None or self._clock.monotonic() - self._read_at >= self._refresh:
            await self._reload()
            if peer in self._allowlist:
                return True
        if not self._allow_channel_peers:
            return False
        try:
            return await self._channels.has_channel(peer)
        except LndCredentialsError:
            raise  # the macaroon's fault, not the peer's: the daemon stops, the mail stays
        except LndError as e:
            log.warning("could not list lnd's channels to check a peer: %s", e)
            return False

    async def say_who(self) -> None:
        """Logs whom mail is kept for; warns when that is nobody, which drops every message
        for an offline peer as not_allowed."""
        channel_peers = " and every peer with a channel" if self._allow_channel_peers else ""
        if not await self._reload():
            log.info("keeping mail for the allowlist (unread until Redis answers)%s", channel_peers)
            return
        log.info("keeping mail for the allowlist (%d peers)%s", len(self._allowlist), channel_peers)
        if not self._allowlist and not self._allow_channel_peers:
            log.warning(
                "no peer is allowed (empty allowlist, no --allow-channel-peers): every "
                "message for an offline peer is dropped; add peers with "
                "`mailboxctl allow add PEER`"
            )

    async def _reload(self) -> bool:
        """Reads the allowlist again; False (keeping the last copy) if Redis could not."""
        self._read_at = self._clock.monotonic()
        try:
            self._allowlist = frozenset(await self._allowlist_in_redis.members())
        except StoreError as e:
            log.warning("could not read the allowlist, using the last copy: %s", e)
            return False
        return True
