"""The connections one ``mailboxctl`` command needs: lnd and the node's store in Redis.

Which node's mailbox: ``--node PUBKEY`` if given, else the node lnd reports (GetInfo), else,
when lnd is unreachable, the one node Redis holds a mailbox for. lnd is asked once per
command and never again on failure: a person is waiting.
"""

from __future__ import annotations

import argparse
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from lndmailbox.cli.errors import CtlError, NodeUnknownError
from lndmailbox.config import Settings
from lndmailbox.errors import ConfigError, LndError, MailboxError, StoreError, StoreUnavailableError
from lndmailbox.lnd import Channel, LndClient, NodeInfo, endpoint_for
from lndmailbox.store import Store, embedded_socket_path, redis_url_for

__all__ = ["LND_TIMEOUT", "Handler", "NodeSource", "Session"]

log = logging.getLogger(__name__)

T = TypeVar("T")

LND_TIMEOUT = 5.0
"""Seconds mailboxctl waits for one lnd call; it never retries (a person is waiting)."""


class NodeSource(enum.StrEnum):
    """Where the node whose mailbox is open came from (its value is what JSON shows)."""

    FLAG = "--node"
    LND = "lnd"
    REDIS = "Redis"


class Session:
    """The connections one command needs, opened on first use and closed at the end."""

    def __init__(self, settings: Settings, *, node: bytes | None) -> None:
        self.settings = settings
        self.node_flag = node
        self.redis_url = redis_url_for(settings)
        self._lnd: LndClient | None = None
        self._lnd_info: NodeInfo | MailboxError | None = None
        self._store: Store | None = None
        self._node: tuple[bytes, NodeSource] | None = None

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.aclose()
        if self._lnd is not None:
            await self._lnd.close()

    @staticmethod
    def now() -> float:
        """The wall clock, read by every command that shows ages (one place to stop it)."""
        return time.time()

    # ---- lnd

    def lnd(self) -> LndClient:
        """The lnd client (ConfigError when lnd's credentials cannot be read)."""
        if self._lnd is None:
            endpoint = endpoint_for(self.settings)
            self._lnd = LndClient(endpoint, timeout=LND_TIMEOUT, retry_for=0.0)
        return self._lnd

    async def lnd_info(self) -> NodeInfo | MailboxError:
        """GetInfo, or why lnd could not be asked (asked once per command)."""
        if self._lnd_info is None:
            try:
                self._lnd_info = await self.lnd().get_info()
            except (LndError, ConfigError) as e:
                log.debug("lnd could not be asked: %s", e)
                self._lnd_info = e
        return self._lnd_info

    async def online_peers(self, node: bytes) -> frozenset[bytes] | MailboxError:
        """The peers lnd is connected to, if lnd is reachable and is ``node``."""
        return await self._ask_lnd_of(node, lambda lnd: lnd.list_peers())

    async def lnd_channels(self, node: bytes) -> tuple[Channel, ...] | MailboxError:
        """lnd's channels (ListChannels, offchain:read), if lnd is reachable and is ``node``;
        else why they could not be read."""
        return await self._ask_lnd_of(node, lambda lnd: lnd.list_channels())

    async def _ask_lnd_of(
        self, node: bytes, call: Callable[[LndClient], Awaitable[T]]
    ) -> T | MailboxError:
        """``call(lnd)`` if lnd is reachable and serves ``node``; else why not."""
        info = await self.lnd_info()
        if not isinstance(info, NodeInfo):
            return info
        if info.pubkey != node:
            return CtlError(f"lnd serves {info.pubkey.hex()}, not {node.hex()}")
        try:
            return await call(self.lnd())
        except LndError as e:
            return e

    # ---- which node, and its store

    async def node(self) -> tuple[bytes, NodeSource]:
        """The node whose mailbox to open, and where that came from."""
        if self._node is None:
            if self.node_flag is not None:
                self._node = (self.node_flag, NodeSource.FLAG)
            else:
                info = await self.lnd_info()
                if isinstance(info, NodeInfo):
                    self._node = (info.pubkey, NodeSource.LND)
                else:
                    self._node = (await self._only_node_in_redis(info), NodeSource.REDIS)
        return self._node

    async def _only_node_in_redis(self, lnd_error: MailboxError) -> bytes:
        """With lnd unreachable, the one node Redis has a mailbox for (else a clear error)."""
        try:
            nodes = await Store.nodes_at(self.redis_url)
        except StoreError as e:
            raise NodeUnknownError(
                lnd_error, f"Redis could not be asked ({self.redis_hint(e)})"
            ) from e
        if len(nodes) == 1:
            return nodes[0]
        if not nodes:
            raise NodeUnknownError(lnd_error, "Redis holds no mailbox")
        raise NodeUnknownError(
            lnd_error, "Redis holds mailboxes of " + ", ".join(n.hex() for n in nodes)
        )

    async def store(self) -> Store:
        """The store of the node's mailbox (finding the node first, see :meth:`node`)."""
        if self._store is None:
            node, _ = await self.node()
            self._store = Store.from_url(self.redis_url, node)
        return self._store

    def redis_hint(self, error: MailboxError) -> str:
        """The error, with where mailboxctl looked when it used the embedded server's socket."""
        if isinstance(error, StoreUnavailableError) and not self.settings.redis_url:
            sock = embedded_socket_path(self.settings.datadir)
            return (
                f"{error} (no --redis-url given: looked for the daemon's embedded Redis at "
                f"{sock}; is lndmailbox running, or is --datadir/--redis-url missing?)"
            )
        return str(error)


Handler = Callable[[Session, argparse.Namespace], Awaitable[int]]
"""One command: runs with the session and the parsed arguments, returns the exit code."""
