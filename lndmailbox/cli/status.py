"""``mailboxctl status``: Redis, lnd, the daemon, what is queued, and the counters.

On lnd >= 0.21 it also names the private channels whose SCID aliases lnd cannot forward an
onion message by (:func:`lndmailbox.lnd.unresolvable_aliases`).

The status is read once into frozen values (:class:`Status` and its parts), then shown as
aligned text (:func:`render_status`) or as JSON (:meth:`Status.as_json`, whose keys and
their order scripts rely on: docs/mailboxctl.md). What cannot be read is left out and
says why; an unreachable lnd alone does not make the command fail.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from lndmailbox.cli.errors import NodeUnknownError
from lndmailbox.cli.output import emit_json, json_time, say
from lndmailbox.cli.render import format_age, format_bytes, format_time, render_fields
from lndmailbox.cli.session import NodeSource, Session
from lndmailbox.errors import ConfigError, MailboxError
from lndmailbox.lnd import (
    Channel,
    NodeInfo,
    Transport,
    UnresolvableAliases,
    transport_for_version,
    unresolvable_aliases,
)
from lndmailbox.lnd.resolver import describe_unresolvable
from lndmailbox.logs import scrub_text
from lndmailbox.onion.tlv import format_scid
from lndmailbox.store import Store

__all__ = [
    "AliasStatus",
    "CounterStatus",
    "DaemonStatus",
    "DaemonsStatus",
    "LndStatus",
    "MailStatus",
    "RedisStatus",
    "ServerStatus",
    "Status",
    "read_status",
    "render_status",
    "run_status",
]

log = logging.getLogger(__name__)

_MAIN_COUNTERS = ("stored", "delivered", "expired", "dropped")
_LEADER_CHANGES = "leader_changes"
"""The counter of times a daemon took the node's lead (its own line, not in "other")."""
_DROPPED = "dropped:"


@dataclass(frozen=True)
class LndStatus:
    """What GetInfo said (``info``), or why lnd could not be asked (``error``)."""

    info: NodeInfo | None
    error: str = ""
    transport: Transport | None = None
    """The transport lnd's version supports; None when the version is not one lnd's
    numbering knows (the daemon then needs ``--transport``)."""

    @classmethod
    def read(cls, answer: NodeInfo | MailboxError) -> LndStatus:
        """From GetInfo's answer, or the error that stood in for it."""
        if not isinstance(answer, NodeInfo):
            return cls(None, scrub_text(str(answer)))
        try:
            transport: Transport | None = transport_for_version(answer.version)
        except ConfigError:
            transport = None
        return cls(answer, transport=transport)

    def as_json(self) -> dict[str, Any]:
        if self.info is None:
            return {"reachable": False, "error": self.error}
        return {
            "reachable": True,
            "pubkey": self.info.pubkey.hex(),
            "alias": self.info.alias,
            "version": self.info.version,
            "transport": None if self.transport is None else self.transport.value,
            "network": self.info.network,
            "synced_to_chain": self.info.synced_to_chain,
        }


@dataclass(frozen=True)
class AliasStatus:
    """lnd >= 0.21: the private channels with SCID aliases lnd cannot forward an onion
    message by (``channels``, empty when none), or why lnd's channels could not be read
    (``error``, then ``channels`` is None)."""

    channels: tuple[UnresolvableAliases, ...] | None
    error: str = ""

    @classmethod
    def read(cls, answer: tuple[Channel, ...] | MailboxError) -> AliasStatus:
        """From ListChannels' answer, or the error that stood in for it."""
        if isinstance(answer, MailboxError):
            return cls(None, scrub_text(str(answer)))
        return cls(unresolvable_aliases(answer))

    def as_json(self) -> dict[str, Any]:
        if self.channels is None:
            return {"checked": False, "error": self.error}
        return {
            "checked": True,
            "channels": [
                {
                    "peer": c.peer.hex(),
                    "channel_point": c.channel_point,
                    "chan_id": format_scid(c.chan_id),
                    "aliases": [format_scid(a) for a in c.aliases],
                }
                for c in self.channels
            ],
        }

    def text(self) -> str:
        if self.channels is None:
            return f"not checked ({self.error})"
        if not self.channels:
            return "ok: lnd forwards by every alias of every private channel"
        return f"warning: {describe_unresolvable(self.channels)}"


@dataclass(frozen=True)
class ServerStatus:
    """What the Redis server said about itself, and the part of its memory this node uses."""

    version: str
    used_memory: int
    mailbox_memory: int


@dataclass(frozen=True)
class RedisStatus:
    """Where Redis is (credentials hidden), what it said, and why it said no more."""

    url: str
    server: ServerStatus | None = None
    """None when Redis was not reached (or not asked: the node is unknown)."""
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url, "reachable": self.server is not None}
        if self.server is not None:
            out.update(
                version=self.server.version,
                used_memory=self.server.used_memory,
                mailbox_memory=self.server.mailbox_memory,
            )
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class DaemonStatus:
    """Whether a daemon serves the node: it holds the node's lock while it runs (and
    releases it when it stops); its heartbeat says who it is and outlives it by a lease."""

    lock_owner: str | None
    heartbeat: Mapping[str, str] | None
    pid: int | None = None
    host: str | None = None
    version: str | None = None
    started_at: float | None = None
    last_heartbeat_at: float | None = None

    @property
    def running(self) -> bool:
        return self.lock_owner is not None

    @classmethod
    def read(cls, owner: str | None, beat: Mapping[str, str] | None) -> DaemonStatus:
        """From the lock's owner and the heartbeat's fields (each field optional)."""
        if beat is None:
            return cls(owner, None)
        pid = started_at = last_at = None
        with contextlib.suppress(KeyError, ValueError):
            pid = int(beat["pid"])
        with contextlib.suppress(KeyError, ValueError):
            started_at = float(beat["started_at"])
        with contextlib.suppress(KeyError, ValueError):
            last_at = float(beat["at"])
        return cls(
            owner, dict(beat), pid, beat.get("host"), beat.get("version"), started_at, last_at
        )

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "running": self.running,
            "lock_owner": self.lock_owner,
            "pid": self.pid,
            "host": self.host,
            "version": self.version,
            "started_at": self.started_at,
            "last_heartbeat_at": self.last_heartbeat_at,
        }
        if self.heartbeat is not None:
            out["heartbeat"] = dict(self.heartbeat)
        return out


@dataclass(frozen=True)
class DaemonsStatus:
    """Every daemon of the node by its own heartbeat (the ``daemons`` hash: role, pid,
    host, version, since), which daemon leads (the lock's owner), and how often the lead
    changed (the ``leader_changes`` counter)."""

    leader: str | None
    beats: Mapping[str, Mapping[str, Any]]
    leader_changes: int

    @property
    def standbys(self) -> list[tuple[str, Mapping[str, Any]]]:
        """The daemons standing by, oldest first."""
        found = [
            (owner, beat)
            for owner, beat in self.beats.items()
            if owner != self.leader and beat.get("role") == "standby"
        ]
        return sorted(found, key=lambda item: _number(item[1].get("since")) or 0.0)

    def as_json(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "standbys": [owner for owner, _ in self.standbys],
            "leader_changes": self.leader_changes,
            "heartbeats": {owner: dict(beat) for owner, beat in sorted(self.beats.items())},
        }

    def standbys_text(self, now: float) -> str:
        standbys = self.standbys
        if not standbys:
            return "none"
        return f"{len(standbys)}: " + "; ".join(_beat_text(beat, now) for _, beat in standbys)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _beat_text(beat: Mapping[str, Any], now: float) -> str:
    """One daemon by its heartbeat: ``pid 7 on host-b, version 0.1.0, standing by for 5m``."""
    parts = []
    if beat.get("pid") is not None:
        parts.append(f"pid {beat['pid']}" + (f" on {beat['host']}" if beat.get("host") else ""))
    if beat.get("version"):
        parts.append(f"version {beat['version']}")
    since = _number(beat.get("since"))
    if since is not None:
        parts.append(f"standing by for {format_age(since, now)}")
    at = _number(beat.get("at"))
    if at is not None:
        parts.append(f"last heartbeat {format_age(at, now)} ago")
    return ", ".join(parts) or "no details"


@dataclass(frozen=True)
class MailStatus:
    """What is held for all peers together; times to the millisecond. ``unconfirmed``: of
    the ``messages``, those lnd took that wait for their confirmation."""

    peers_with_mail: int
    messages: int
    bytes: int
    oldest_received_at: float | None
    oldest_age: float | None
    unconfirmed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "peers_with_mail": self.peers_with_mail,
            "messages": self.messages,
            "bytes": self.bytes,
            "unconfirmed": self.unconfirmed,
            "oldest_received_at": self.oldest_received_at,
            "oldest_age": self.oldest_age,
        }


@dataclass(frozen=True)
class CounterStatus:
    """The node's counters since Redis was first used, by name (sorted)."""

    all: Mapping[str, int]

    def get(self, name: str) -> int:
        return self.all.get(name, 0)

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        """The ``dropped:<reason>`` counters, by reason."""
        return {k.removeprefix(_DROPPED): v for k, v in self.all.items() if k.startswith(_DROPPED)}

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values()) + self.get("dropped")

    @property
    def others(self) -> dict[str, int]:
        """Every counter that is neither a main one nor a drop reason (received, ...)."""
        return {
            k: v
            for k, v in self.all.items()
            if k not in _MAIN_COUNTERS and k != _LEADER_CHANGES and not k.startswith(_DROPPED)
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "stored": self.get("stored"),
            "delivered": self.get("delivered"),
            "expired": self.get("expired"),
            "dropped": self.dropped,
            "dropped_by_reason": self.dropped_by_reason,
            "all": dict(self.all),
        }


@dataclass(frozen=True)
class Status:
    """Everything ``status`` shows. The store's parts are None when they could not be read."""

    lnd: LndStatus
    redis: RedisStatus
    node: bytes | None = None
    node_source: NodeSource | None = None
    node_error: str | None = None
    """Why the node is unknown (then nothing was read from Redis)."""
    daemon: DaemonStatus | None = None
    daemons: DaemonsStatus | None = None
    mail: MailStatus | None = None
    counters: CounterStatus | None = None
    aliases: AliasStatus | None = None
    """None where it does not apply: lnd <= 0.20 (the mailbox resolves every alias) or a
    version lnd's numbering does not know."""

    @property
    def problem(self) -> str | None:
        """Why the command fails (exit 1), if it does."""
        if self.node_error is not None:
            return "cannot tell which node's mailbox to show: pass --node PUBKEY"
        if self.redis.error is not None:
            return "Redis is unreachable"
        return None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": None if self.node is None else self.node.hex(),
            "node_source": None if self.node_source is None else self.node_source.value,
            "lnd": self.lnd.as_json(),
        }
        if self.aliases is not None:
            out["unresolvable_aliases"] = self.aliases.as_json()
        out["redis"] = self.redis.as_json()
        if self.node_error is not None:
            out["node_error"] = self.node_error
        for name, part in (
            ("daemon", self.daemon),
            ("daemons", self.daemons),
            ("mail", self.mail),
            ("counters", self.counters),
        ):
            if part is not None:
                out[name] = part.as_json()
        return out


# --------------------------------------------------------------------------- reading


async def read_status(s: Session, now: float) -> Status:
    """Asks lnd and Redis; every part that answers is in the result."""
    lnd = LndStatus.read(await s.lnd_info())
    redis = RedisStatus(scrub_text(s.redis_url))
    try:
        node, source = await s.node()
    except NodeUnknownError as e:
        # The lnd part already says why lnd could not be asked.
        why = f"lnd is unreachable, no --node was given, and {e.redis_answer}"
        unchecked = AliasStatus(None, lnd.error)
        return Status(lnd, redis, aliases=unchecked, node_error=scrub_text(why))
    aliases = await _alias_status(s, lnd, node)
    daemon: DaemonStatus | None = None
    daemons: DaemonsStatus | None = None
    mail: MailStatus | None = None
    counters: CounterStatus | None = None
    try:
        store = await s.store()
        redis = replace(redis, server=await _redis_server(store))
        beat = await store.control.read_heartbeat()
        owner = await store.control.lock_owner()
        daemon = DaemonStatus.read(owner, beat)
        beats = await store.control.read_daemons()
        mail = await _mail_status(store, now)
        counters = CounterStatus(await store.events.counters())
        daemons = DaemonsStatus(owner, beats, counters.get(_LEADER_CHANGES))
    except MailboxError as e:
        # What was read before Redis failed is still shown.
        redis = replace(redis, error=scrub_text(s.redis_hint(e)))
    return Status(
        lnd,
        redis,
        node,
        source,
        daemon=daemon,
        daemons=daemons,
        mail=mail,
        counters=counters,
        aliases=aliases,
    )


async def _alias_status(s: Session, lnd: LndStatus, node: bytes) -> AliasStatus | None:
    """The alias check where it applies: lnd >= 0.21 (of ``node``: else it says whose lnd
    it is), or an lnd that could not be asked (it says why, as the lnd line does)."""
    if lnd.info is None:
        return AliasStatus(None, lnd.error)
    if lnd.transport is not Transport.NATIVE:
        return None
    return AliasStatus.read(await s.lnd_channels(node))


async def _redis_server(store: Store) -> ServerStatus:
    server = await store.server.info()
    return ServerStatus(server.version, server.used_memory, await store.server.memory_usage())


async def _mail_status(store: Store, now: float) -> MailStatus:
    stats = await store.queues.stats()
    oldest = stats.oldest_received_at
    return MailStatus(
        stats.peers_with_mail,
        stats.messages,
        stats.bytes,
        json_time(oldest),
        None if oldest is None else json_time(now - oldest),
        stats.unconfirmed,
    )


# --------------------------------------------------------------------------- text

_NODE_SOURCE_TEXT = {
    NodeSource.LND: "from lnd",
    NodeSource.FLAG: "from --node",
    NodeSource.REDIS: "the only mailbox in Redis; lnd unreachable",
}


def render_status(status: Status, now: float) -> str:
    """The status as aligned ``label  value`` lines."""
    fields = [_node_field(status), _lnd_field(status)]
    if status.aliases is not None:
        fields.append(("scid aliases", status.aliases.text()))
    fields.append(_redis_field(status.redis))
    if status.daemon is not None:
        fields.append(("daemon", _daemon_text(status.daemon, now)))
    if status.daemons is not None:
        fields.append(("standbys", status.daemons.standbys_text(now)))
        fields.append(("leader changes", str(status.daemons.leader_changes)))
    if status.mail is not None:
        fields.extend(_mail_fields(status.mail, now))
    if status.counters is not None:
        fields.extend(_counter_fields(status.counters))
    return render_fields(fields)


def _node_field(status: Status) -> tuple[str, str]:
    if status.node is None:
        return ("node", f"unknown ({status.node_error})")
    source = "" if status.node_source is None else _NODE_SOURCE_TEXT[status.node_source]
    return ("node", f"{status.node.hex()} ({source})")


def _lnd_field(status: Status) -> tuple[str, str]:
    info = status.lnd.info
    if info is None:
        return ("lnd", f"unreachable ({status.lnd.error})")
    alias = f'"{info.alias}" ' if info.alias else ""
    other = " (another node than the one shown here)" if info.pubkey != status.node else ""
    transport = "unknown" if status.lnd.transport is None else status.lnd.transport.value
    return ("lnd", f"{alias}{info.pubkey.hex()}{other}, lnd {info.version}, transport {transport}")


def _redis_field(redis: RedisStatus) -> tuple[str, str]:
    if redis.server is not None:
        return (
            "redis",
            f"{redis.url}, version {redis.server.version}, "
            f"{format_bytes(redis.server.used_memory)} used, "
            f"{format_bytes(redis.server.mailbox_memory)} of it by this mailbox",
        )
    if redis.error is not None:
        return ("redis", f"unreachable ({redis.error})")
    return ("redis", f"{redis.url} (not asked: the node is unknown)")


def _daemon_text(daemon: DaemonStatus, now: float) -> str:
    last = daemon.last_heartbeat_at
    if not daemon.running:
        if last is None:
            return "not running (no lock, no heartbeat)"
        return f"not running (stopped; last heartbeat {format_age(last, now)} ago)"
    if daemon.heartbeat is None:
        return f"running (lock held by {daemon.lock_owner}; no heartbeat yet)"
    text = "running"
    if daemon.started_at is not None:
        text += f" since {format_time(daemon.started_at)} (up {format_age(daemon.started_at, now)})"
    who = " ".join(
        part
        for part in (
            f"pid {daemon.pid}" if daemon.pid is not None else "",
            f"on {daemon.host}" if daemon.host else "",
        )
        if part
    )
    if who:
        text += f", {who}"
    if daemon.version:
        text += f", version {daemon.version}"
    if last is not None:
        text += f", last heartbeat {format_age(last, now)} ago"
    return text


def _mail_fields(mail: MailStatus, now: float) -> list[tuple[str, str]]:
    oldest = mail.oldest_received_at
    return [
        ("peers with mail", str(mail.peers_with_mail)),
        ("messages", f"{mail.messages} ({format_bytes(mail.bytes)})"),
        ("unconfirmed", f"{mail.unconfirmed} of them (lnd took them; deleted once confirmed)"),
        (
            "oldest message",
            "-" if oldest is None else f"{format_age(oldest, now)} old ({format_time(oldest)})",
        ),
    ]


def _counter_fields(counters: CounterStatus) -> list[tuple[str, str]]:
    fields = [
        ("stored", str(counters.get("stored"))),
        ("delivered", str(counters.get("delivered"))),
        ("expired", str(counters.get("expired"))),
        ("dropped", str(counters.dropped)),
    ]
    fields += [(f"  {reason}", str(n)) for reason, n in sorted(counters.dropped_by_reason.items())]
    if others := counters.others:
        fields.append(("other counters", ", ".join(f"{k} {v}" for k, v in others.items())))
    return fields


# --------------------------------------------------------------------------- command


async def run_status(s: Session, args: argparse.Namespace) -> int:
    """``status``: exit 1 when Redis is unreachable or the node is unknown, after showing
    every line it can."""
    now = s.now()
    status = await read_status(s, now)
    if args.json:
        emit_json(status.as_json())
    else:
        print(render_status(status, now))
    if status.problem is not None:
        say(status.problem)
        return 1
    return 0
