"""``mailboxctl``: look at and steer what the mailbox holds.

A thin layer over :class:`~lndmailbox.store.Store` (and lnd, only where lnd must be asked:
the node's own identity and which peers are online). It reads the daemon's connection
settings (same flags, ``LNDMAILBOX_*`` environment variables and config file), so it
finds the same Redis and the same lnd without being told twice.

Which node's mailbox: ``--node PUBKEY`` if given, else the node lnd reports (GetInfo), else,
when lnd is unreachable, the one node Redis holds a mailbox for.
Commands that do not need lnd keep working when lnd is unreachable as long as the node
is known.

Output: aligned text for people by default; ``--json`` (before or after the command) for
scripts. Exit codes: 0 ok, 1 error (Redis unreachable, nothing to act on, refused...), 2
usage (bad arguments or settings), 130 interrupted. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import string
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from coincurve import PublicKey

from lndmailbox import __version__
from lndmailbox.config import Settings, add_arguments, settings_from_args
from lndmailbox.daemon import embedded_socket_path, lnd_endpoint, redis_url_for
from lndmailbox.errors import (
    ConfigError,
    LndError,
    MailboxError,
    OnionError,
    StoreError,
    StoreUnavailableError,
)
from lndmailbox.lnd import LndClient, NodeInfo
from lndmailbox.logs import scrub_text
from lndmailbox.store import Event, Store, StoredMessage
from lndmailbox.tables import (
    format_age,
    format_bytes,
    format_time,
    format_until,
    render_fields,
    render_table,
)
from lndmailbox.wire import (
    HMAC_LEN,
    MIN_ONION_PACKET_LEN,
    ONION_MESSAGE_TYPE,
    POINT_LEN,
    OnionMessage,
)

__all__ = ["build_parser", "main", "packet_fields", "parse_onion_message"]

PROG = "mailboxctl"

LND_TIMEOUT = 5.0
"""Seconds mailboxctl waits for one lnd call; it never retries (a person is waiting)."""

FOLLOW_BLOCK_MS = 5_000
"""How long one XREAD of ``events --follow`` waits before asking again."""

PURGE_REASON = "purged"
"""Drop reason of messages an operator purged (counter ``dropped:purged``, event reason)."""

_HEX = frozenset(string.hexdigits)
_MESSAGE_ID_LEN = 20


class CtlError(MailboxError):
    """A command that cannot do what it was asked (exit 1)."""


class NodeUnknownError(CtlError):
    """lnd is unreachable, no --node was given, and Redis does not point at one mailbox."""

    def __init__(self, lnd_error: MailboxError, redis_answer: str) -> None:
        super().__init__(
            f"cannot tell which node's mailbox to open: lnd is unreachable ({lnd_error}) and "
            f"{redis_answer}; pass --node PUBKEY"
        )
        self.redis_answer = redis_answer
        """What Redis said instead of one node: none, several (named), or no answer."""


class UsageError(MailboxError):
    """An argument found wrong after parsing, e.g. hex read from stdin (exit 2)."""


# --------------------------------------------------------------------------- arguments


def pubkey_arg(text: str) -> bytes:
    """A node pubkey argument: 66 hex characters, a compressed secp256k1 point."""
    t = text.strip().lower()
    what = f"{text!r} is not a node pubkey"
    if len(t) != 2 * POINT_LEN or not set(t) <= _HEX:
        raise argparse.ArgumentTypeError(
            f"{what}: expected 66 hex characters (a 33-byte compressed key), got {len(t)}"
            + ("" if set(t) <= _HEX else " with non-hex characters")
        )
    if t[:2] not in ("02", "03"):
        raise argparse.ArgumentTypeError(f"{what}: a compressed key starts with 02 or 03")
    key = bytes.fromhex(t)
    try:
        PublicKey(key)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{what}: not a point on secp256k1") from e
    return key


def message_id_arg(text: str) -> str:
    """A message id as ``show`` prints it: 20 hex characters."""
    t = text.strip().lower()
    if len(t) != _MESSAGE_ID_LEN or not set(t) <= _HEX:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a message id: expected {_MESSAGE_ID_LEN} hex characters "
            "(as `mailboxctl show PEER` prints them)"
        )
    return t


def count_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from e
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return n


def hex_arg(text: str) -> str:
    """HEX or ``-`` (read stdin); the hex itself is checked by :func:`parse_hex`."""
    if text != "-":
        try:
            parse_hex(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    return text


def parse_hex(text: str) -> bytes:
    """Bytes from hex, forgiving whitespace, line breaks and a ``0x`` prefix."""
    t = "".join(text.split())
    if t[:2].lower() == "0x":
        t = t[2:]
    if not t:
        raise UsageError("no hex given")
    try:
        return bytes.fromhex(t)
    except ValueError as e:
        raise UsageError(f"not hex ({len(t)} characters): {e}") from e


def build_parser() -> argparse.ArgumentParser:
    # Accepted after the command too: defaults are SUPPRESS so that a subcommand that
    # was not given them leaves the values from before the command alone.
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    late.add_argument(
        "--node",
        type=pubkey_arg,
        default=argparse.SUPPRESS,
        metavar="PUBKEY",
        help="the lnd node whose mailbox to open (default: the node lnd reports)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at and steer the onion message mailbox of an lnd node.",
        epilog="Exit codes: 0 ok, 1 error (Redis unreachable, nothing to act on, refused), "
        "2 bad arguments or settings, 130 interrupted. See docs/mailboxctl.md.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--json", action="store_true", default=False, help="JSON output for scripts"
    )
    parser.add_argument(
        "--node",
        type=pubkey_arg,
        default=None,
        metavar="PUBKEY",
        help="the lnd node whose mailbox to open (default: the node lnd reports)",
    )
    add_arguments(parser, daemon=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[late], help=help_text, description=help_text)

    command("status", "Redis, lnd, the daemon and what is queued, at a glance")
    command("peers", "every peer with mail: online, messages, bytes, ages, allowed")

    p = command("show", "the messages queued for one peer")
    p.add_argument("peer", type=pubkey_arg, metavar="PEER", help="the peer's pubkey (hex)")
    p.add_argument(
        "--decode",
        action="store_true",
        help="also show what the packet says without the peer's key (version, ephemeral key)",
    )

    p = command("allow", "the allowlist: peers the mailbox keeps mail for")
    allow = p.add_subparsers(dest="allow_command", required=True, metavar="ACTION")
    for name, help_text in (
        ("add", "allow these peers"),
        ("remove", "stop allowing these peers (their queued mail stays)"),
    ):
        a = allow.add_parser(name, parents=[late], help=help_text, description=help_text)
        a.add_argument("peers", type=pubkey_arg, nargs="+", metavar="PEER")
    allow.add_parser("list", parents=[late], help="list the allowed peers")

    p = command("purge", "delete a peer's queued messages (all, or one with --id)")
    p.add_argument("peer", type=pubkey_arg, metavar="PEER")
    p.add_argument("--id", type=message_id_arg, default=None, help="only this message")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p = command("deliver", "ask the running daemon to try delivering to a peer now")
    p.add_argument("peer", type=pubkey_arg, metavar="PEER")

    p = command("decode", "decode an onion_message (with or without its 2-byte type)")
    p.add_argument("hex", type=hex_arg, metavar="HEX|-", help="the message in hex, - for stdin")

    p = command("events", "the node's event stream: stored, delivered, expired, dropped, ...")
    p.add_argument(
        "--count",
        "-n",
        type=count_arg,
        default=20,
        metavar="N",
        help="latest events to show first (default 20)",
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument(
        "--exit-after",
        type=count_arg,
        default=None,
        metavar="N",
        help="with --follow: stop after N new events",
    )
    return parser


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        settings = settings_from_args(args)
    except ConfigError as e:
        _error(f"bad settings: {e}")
        return 2
    handler = _COMMANDS[args.command]
    try:
        return asyncio.run(_run(handler, settings, args))
    except UsageError as e:
        _error(f"{args.command}: {e}")
        return 2
    except ConfigError as e:
        _error(str(e))
        return 2
    except MailboxError as e:
        _error(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (| head): not an error; keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _error(message: str) -> None:
    print(f"{PROG}: {scrub_text(message)}", file=sys.stderr)


Handler = Callable[["Session", argparse.Namespace], Awaitable[int]]


async def _run(handler: Handler, settings: Settings, args: argparse.Namespace) -> int:
    async with Session(settings, node=args.node) as session:
        try:
            return await handler(session, args)
        except StoreUnavailableError as e:
            raise StoreUnavailableError(session.redis_hint(e)) from e


# --------------------------------------------------------------------------- session


class Session:
    """The connections one command needs, opened on first use and closed at the end."""

    def __init__(self, settings: Settings, *, node: bytes | None) -> None:
        self.settings = settings
        self.node_flag = node
        self.redis_url = redis_url_for(settings)
        self._lnd: LndClient | None = None
        self._lnd_info: NodeInfo | MailboxError | None = None
        self._store: Store | None = None
        self._node: tuple[bytes, str] | None = None

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.aclose()
        if self._lnd is not None:
            await self._lnd.close()

    # ---- lnd

    def lnd(self) -> LndClient:
        """The lnd client (ConfigError when lnd's credentials cannot be read)."""
        if self._lnd is None:
            self._lnd = LndClient(lnd_endpoint(self.settings), timeout=LND_TIMEOUT, retry_for=0.0)
        return self._lnd

    async def lnd_info(self) -> NodeInfo | MailboxError:
        """GetInfo, or why lnd could not be asked (asked once per command)."""
        if self._lnd_info is None:
            try:
                self._lnd_info = await self.lnd().get_info()
            except (LndError, ConfigError) as e:
                self._lnd_info = e
        return self._lnd_info

    async def online_peers(self, node: bytes) -> frozenset[bytes] | MailboxError:
        """The peers lnd is connected to, if lnd is reachable and is ``node``."""
        info = await self.lnd_info()
        if not isinstance(info, NodeInfo):
            return info
        if info.pubkey != node:
            return CtlError(f"lnd serves {info.pubkey.hex()}, not {node.hex()}")
        try:
            return await self.lnd().list_peers()
        except LndError as e:
            return e

    # ---- which node, and its store

    async def node(self) -> tuple[bytes, str]:
        """The node whose mailbox to open and where that came from ("--node" or "lnd")."""
        if self._node is None:
            if self.node_flag is not None:
                self._node = (self.node_flag, "--node")
            else:
                info = await self.lnd_info()
                if isinstance(info, NodeInfo):
                    self._node = (info.pubkey, "lnd")
                else:
                    self._node = (await self._only_node_in_redis(info), "Redis")
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


# --------------------------------------------------------------------------- output


def _emit_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _peer_label(peer: bytes | None) -> str:
    return peer.hex() if peer else "-"


def _opt(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --------------------------------------------------------------------------- status


async def cmd_status(s: Session, args: argparse.Namespace) -> int:
    now = time.time()
    report: dict[str, Any] = {"node": None, "node_source": None}

    info = await s.lnd_info()
    if isinstance(info, NodeInfo):
        report["lnd"] = {
            "reachable": True,
            "pubkey": info.pubkey.hex(),
            "alias": info.alias,
            "version": info.version,
            "transport": info.transport.value,
            "network": info.network,
            "synced_to_chain": info.synced_to_chain,
        }
    else:
        report["lnd"] = {"reachable": False, "error": scrub_text(str(info))}

    redis: dict[str, Any] = {"url": scrub_text(s.redis_url), "reachable": False}
    report["redis"] = redis
    problem: str | None = None
    try:
        node, source = await s.node()
    except NodeUnknownError as e:
        # The lnd row already says why lnd could not be asked.
        report["node_error"] = scrub_text(
            f"lnd is unreachable, no --node was given, and {e.redis_answer}"
        )
        problem = "cannot tell which node's mailbox to show: pass --node PUBKEY"
    else:
        report["node"], report["node_source"] = node.hex(), source
        try:
            await _status_from_store(await s.store(), report, now)
        except MailboxError as e:
            redis["error"] = scrub_text(s.redis_hint(e))
            problem = "Redis is unreachable"

    if args.json:
        _emit_json(report)
    else:
        print(_render_status(report, now))
    if problem is not None:
        _error(problem)
        return 1
    return 0


async def _status_from_store(store: Store, report: dict[str, Any], now: float) -> None:
    server = await store.server_info()
    report["redis"].update(
        reachable=True,
        version=server.version,
        used_memory=server.used_memory,
        mailbox_memory=await store.memory_usage(),
    )
    beat = await store.read_heartbeat()
    owner = await store.lock_owner()
    report["daemon"] = _daemon_report(owner, beat)
    stats = await store.stats()
    report["mail"] = {
        "peers_with_mail": stats.peers_with_mail,
        "messages": stats.messages,
        "bytes": stats.bytes,
        "oldest_received_at": _opt(stats.oldest_received_at),
        "oldest_age": None
        if stats.oldest_received_at is None
        else _opt(now - stats.oldest_received_at),
    }
    counters = await store.counters()
    dropped = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("dropped:")}
    report["counters"] = {
        "stored": counters.get("stored", 0),
        "delivered": counters.get("delivered", 0),
        "expired": counters.get("expired", 0),
        "dropped": sum(dropped.values()) + counters.get("dropped", 0),
        "dropped_by_reason": dropped,
        "all": counters,
    }


def _render_status(r: dict[str, Any], now: float) -> str:
    fields: list[tuple[str, str]] = []
    source = {
        "lnd": "from lnd",
        "--node": "from --node",
        "Redis": "the only mailbox in Redis; lnd unreachable",
    }.get(r["node_source"] or "", "")
    fields.append(
        ("node", f"{r['node']} ({source})" if r["node"] else f"unknown ({r['node_error']})")
    )

    lnd = r["lnd"]
    if lnd["reachable"]:
        alias = f'"{lnd["alias"]}" ' if lnd["alias"] else ""
        other = " (another node than the one shown here)" if lnd["pubkey"] != r["node"] else ""
        fields.append(
            (
                "lnd",
                f"{alias}{lnd['pubkey']}{other}, lnd {lnd['version']}, "
                f"transport {lnd['transport']}",
            )
        )
    else:
        fields.append(("lnd", f"unreachable ({lnd['error']})"))

    redis = r["redis"]
    if redis["reachable"]:
        fields.append(
            (
                "redis",
                f"{redis['url']}, version {redis['version']}, "
                f"{format_bytes(redis['used_memory'])} used, "
                f"{format_bytes(redis['mailbox_memory'])} of it by this mailbox",
            )
        )
    elif "error" in redis:
        fields.append(("redis", f"unreachable ({redis['error']})"))
    else:
        fields.append(("redis", f"{redis['url']} (not asked: the node is unknown)"))

    daemon = r.get("daemon")
    if daemon is not None:
        fields.append(("daemon", _render_daemon(daemon, now)))
    mail = r.get("mail")
    if mail is not None:
        fields.append(("peers with mail", str(mail["peers_with_mail"])))
        fields.append(("messages", f"{mail['messages']} ({format_bytes(mail['bytes'])})"))
        oldest = mail["oldest_received_at"]
        fields.append(
            (
                "oldest message",
                "-" if oldest is None else f"{format_age(oldest, now)} old ({format_time(oldest)})",
            )
        )
    counters = r.get("counters")
    if counters is not None:
        for name in ("stored", "delivered", "expired", "dropped"):
            fields.append((name, str(counters[name])))
        for reason, n in sorted(counters["dropped_by_reason"].items()):
            fields.append((f"  {reason}", str(n)))
        main_names = {"stored", "delivered", "expired", "dropped"}
        others = [
            f"{k} {v}"
            for k, v in counters["all"].items()
            if k not in main_names and not k.startswith("dropped:")
        ]
        if others:
            fields.append(("other counters", ", ".join(others)))
    return render_fields(fields)


def _daemon_report(owner: str | None, beat: dict[str, str] | None) -> dict[str, Any]:
    """Whether a daemon serves the node: it holds the node's lock while it runs (and
    releases it when it stops); its heartbeat says who it is and outlives it by a lease."""
    out: dict[str, Any] = {
        "running": owner is not None,
        "lock_owner": owner,
        "pid": None,
        "host": None,
        "version": None,
        "started_at": None,
        "last_heartbeat_at": None,
    }
    if beat is not None:
        out["heartbeat"] = dict(beat)
        out["host"], out["version"] = beat.get("host"), beat.get("version")
        with contextlib.suppress(KeyError, ValueError):
            out["pid"] = int(beat["pid"])
        for field, key in (("started_at", "started_at"), ("last_heartbeat_at", "at")):
            with contextlib.suppress(KeyError, ValueError):
                out[field] = float(beat[key])
    return out


def _render_daemon(daemon: dict[str, Any], now: float) -> str:
    last = daemon["last_heartbeat_at"]
    if not daemon["running"]:
        if last is None:
            return "not running (no lock, no heartbeat)"
        return f"not running (stopped; last heartbeat {format_age(last, now)} ago)"
    if "heartbeat" not in daemon:
        return f"running (lock held by {daemon['lock_owner']}; no heartbeat yet)"
    started = daemon["started_at"]
    text = "running"
    if started is not None:
        text += f" since {format_time(started)} (up {format_age(started, now)})"
    who = " ".join(
        part
        for part in (
            f"pid {daemon['pid']}" if daemon["pid"] is not None else "",
            f"on {daemon['host']}" if daemon["host"] else "",
        )
        if part
    )
    if who:
        text += f", {who}"
    if daemon["version"]:
        text += f", version {daemon['version']}"
    if last is not None:
        text += f", last heartbeat {format_age(last, now)} ago"
    return text


# --------------------------------------------------------------------------- peers


async def cmd_peers(s: Session, args: argparse.Namespace) -> int:
    now = time.time()
    store = await s.store()
    summaries = await store.peer_summaries()
    allowed = set(await store.allowlist())
    online = await s.online_peers(store.node) if summaries else frozenset[bytes]()
    known = not isinstance(online, MailboxError)
    if isinstance(online, MailboxError):
        _error(f"online status unknown: {online}")
    rows: list[dict[str, Any]] = [
        {
            "peer": p.peer.hex(),
            "online": (p.peer in online) if not isinstance(online, MailboxError) else None,
            "messages": p.messages,
            "bytes": p.bytes,
            "oldest_received_at": _opt(p.oldest_received_at),
            "newest_received_at": _opt(p.newest_received_at),
            "next_expiry": _opt(p.next_expiry),
            "allowed": p.peer in allowed,
        }
        for p in summaries
    ]
    if args.json:
        _emit_json({"node": store.node.hex(), "online_known": known, "peers": rows})
        return 0
    if not rows:
        print("no peer has mail")
        return 0
    table = [
        [
            row["peer"],
            "?" if row["online"] is None else "yes" if row["online"] else "no",
            str(row["messages"]),
            format_bytes(row["bytes"]),
            format_age(row["oldest_received_at"], now),
            format_age(row["newest_received_at"], now),
            format_until(row["next_expiry"], now),
            "yes" if row["allowed"] else "no",
        ]
        for row in rows
    ]
    headers = ["PEER", "ONLINE", "MSGS", "BYTES", "OLDEST", "NEWEST", "NEXT EXPIRY", "ALLOWED"]
    print(render_table(headers, table, right=(2, 3, 4, 5)))
    return 0


# --------------------------------------------------------------------------- show


def packet_fields(onion: bytes) -> dict[str, Any]:
    """What an onion_message_packet shows without the recipient's key.

    ``version`` (0 is the only one defined), ``length``, ``ephemeral_key`` (and whether it
    is a valid point), ``payloads_length`` (the encrypted hop payloads), ``hmac``.
    """
    fields: dict[str, Any] = {"length": len(onion)}
    if not onion:
        return fields
    fields["version"] = onion[0]
    if len(onion) >= 1 + POINT_LEN:
        key = onion[1 : 1 + POINT_LEN]
        fields["ephemeral_key"] = key.hex()
        try:
            PublicKey(key)
            fields["ephemeral_key_valid"] = True
        except ValueError:
            fields["ephemeral_key_valid"] = False
    if len(onion) >= MIN_ONION_PACKET_LEN:
        fields["payloads_length"] = len(onion) - 1 - POINT_LEN - HMAC_LEN
        fields["hmac"] = onion[-HMAC_LEN:].hex()
    return fields


def _packet_lines(p: dict[str, Any]) -> list[tuple[str, str]]:
    lines = [
        (
            "packet version",
            str(p.get("version", "-")) + ("" if p.get("version") == 0 else " (unknown)"),
        )
    ]
    lines.append(("packet length", f"{p['length']} bytes"))
    if "ephemeral_key" in p:
        valid = "" if p["ephemeral_key_valid"] else " (not a valid point)"
        lines.append(("ephemeral key", p["ephemeral_key"] + valid))
    if "payloads_length" in p:
        lines.append(("hop payloads", f"{p['payloads_length']} bytes (encrypted)"))
        lines.append(("hmac", p["hmac"]))
    return lines


def _message_json(m: StoredMessage, now: float, decode: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": m.id,
        "size": m.size,
        "sender": m.sender.hex(),
        "received_at": _opt(m.received_at),
        "expires_at": _opt(m.expires_at),
        "expired": m.expired(now),
        "attempts": m.attempts,
        "path_key": m.path_key.hex(),
    }
    if decode:
        out["packet"] = packet_fields(m.onion)
    return out


async def cmd_show(s: Session, args: argparse.Namespace) -> int:
    now = time.time()
    store = await s.store()
    peer: bytes = args.peer
    messages = await store.messages(peer)
    if args.json:
        _emit_json(
            {
                "peer": peer.hex(),
                "allowed": await store.is_allowed(peer),
                "messages": [_message_json(m, now, args.decode) for m in messages],
            }
        )
        return 0
    if not messages:
        print(f"nothing queued for {peer.hex()}")
        return 0
    total = sum(m.size for m in messages)
    n = len(messages)
    blocks = [f"{n} message{'s' if n != 1 else ''} ({format_bytes(total)}) queued for {peer.hex()}"]
    for m in messages:
        expires = (
            "expired, waiting for the sweep" if m.expired(now) else format_until(m.expires_at, now)
        )
        fields = [
            ("size", f"{m.size} bytes"),
            ("from", m.sender.hex()),
            ("received", f"{format_time(m.received_at)} ({format_age(m.received_at, now)} ago)"),
            ("expires", f"{format_time(m.expires_at)} ({expires})"),
            ("attempts", str(m.attempts)),
            ("path key", m.path_key.hex()),
        ]
        if args.decode:
            fields.extend(_packet_lines(packet_fields(m.onion)))
        blocks.append(f"message {m.id}\n{render_fields(fields, indent=2)}")
    print("\n\n".join(blocks))
    return 0


# --------------------------------------------------------------------------- allow


async def cmd_allow(s: Session, args: argparse.Namespace) -> int:
    store = await s.store()
    action: str = args.allow_command
    if action == "list":
        peers = await store.allowlist()
        if args.json:
            _emit_json({"allowlist": [p.hex() for p in peers]})
        elif peers:
            print("\n".join(p.hex() for p in peers))
        else:
            print("the allowlist is empty")
        return 0
    chosen: list[bytes] = list(dict.fromkeys(args.peers))
    if action == "add":
        changed = await store.allow_add(chosen)
        verb, unchanged = "added", "already allowed"
    else:
        changed = await store.allow_remove(chosen)
        verb, unchanged = "removed", "were not on the allowlist"
    if args.json:
        _emit_json(
            {verb: changed, "unchanged": len(chosen) - changed, "peers": [p.hex() for p in chosen]}
        )
    else:
        rest = len(chosen) - changed
        print(
            f"{verb} {changed} peer{'s' if changed != 1 else ''}"
            + (f", {rest} {unchanged}" if rest else "")
        )
    return 0


# --------------------------------------------------------------------------- purge


async def cmd_purge(s: Session, args: argparse.Namespace) -> int:
    store = await s.store()
    peer: bytes = args.peer
    message_id: str | None = args.id
    queued = await store.messages(peer)
    targets = [m for m in queued if message_id is None or m.id == message_id]
    if not targets:
        if message_id is not None:
            raise CtlError(f"no message {message_id} is queued for {peer.hex()}")
        if args.json:
            _emit_json({"peer": peer.hex(), "purged": 0})
        else:
            print(f"nothing queued for {peer.hex()}")
        return 0
    what = (
        f"message {message_id}"
        if message_id
        else f"all {len(targets)} message{'s' if len(targets) != 1 else ''}"
    )
    if not args.yes:
        if not _stdin_is_tty():
            raise CtlError(
                f"not deleting {what} of {peer.hex()} without confirmation: "
                "stdin is not a terminal, pass --yes"
            )
        if not _confirm(f"Delete {what} queued for {peer.hex()}? [y/N] "):
            _error("nothing deleted")
            return 1
    removed = await store.purge(peer, message_id)
    if removed:
        # Purged messages are dropped messages: counted and told like the daemon's drops.
        await store.record(
            {f"dropped:{PURGE_REASON}": removed},
            [("dropped", peer, m.id, m.size, PURGE_REASON) for m in targets[:removed]],
        )
    if args.json:
        _emit_json({"peer": peer.hex(), "purged": removed})
    else:
        print(f"purged {removed} message{'s' if removed != 1 else ''} of {peer.hex()}")
    return 0


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


def _confirm(prompt: str, stdin: TextIO | None = None) -> bool:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    answer = (stdin or sys.stdin).readline()
    return answer.strip().lower() in ("y", "yes")


# --------------------------------------------------------------------------- deliver


async def cmd_deliver(s: Session, args: argparse.Namespace) -> int:
    store = await s.store()
    peer: bytes = args.peer
    await store.request_delivery(peer)
    queued = len(await store.messages(peer))
    running = await store.read_heartbeat() is not None or await store.lock_owner() is not None
    if args.json:
        _emit_json(
            {"peer": peer.hex(), "requested": True, "queued": queued, "daemon_running": running}
        )
    else:
        print(
            f"asked the daemon to deliver to {peer.hex()} now "
            f"({queued} message{'s' if queued != 1 else ''} queued)"
        )
    if not running:
        _error("no daemon is running for this node: the request waits (up to an hour) for one")
    elif not queued:
        _error(f"nothing is queued for {peer.hex()}")
    return 0


# --------------------------------------------------------------------------- decode


@dataclass(frozen=True)
class Decoded:
    """An onion_message as given to ``decode``: with its type or without."""

    message: OnionMessage
    typed: bool
    extension: bytes


def parse_onion_message(data: bytes) -> Decoded:
    """The body of an onion_message, with or without the 2-byte type 513 in front.

    A body starts with its path key (02/03...), so ``02 01`` in front is ambiguous: it is
    read as the type first and as a bare body if that fails.
    """
    attempts: list[tuple[bytes, bool]] = []
    if data[:2] == ONION_MESSAGE_TYPE.to_bytes(2, "big"):
        attempts.append((data[2:], True))
    attempts.append((data, False))
    first: OnionError | None = None
    for body, typed in attempts:
        try:
            msg = OnionMessage.decode(body)
        except OnionError as e:
            first = first or e
            continue
        end = POINT_LEN + 2 + len(msg.onion)
        return Decoded(msg, typed, body[end:])
    assert first is not None
    raise CtlError(f"not an onion_message: {first}") from first


async def cmd_decode(s: Session, args: argparse.Namespace) -> int:
    text: str = args.hex
    data = parse_hex(sys.stdin.read() if text == "-" else text)
    decoded = parse_onion_message(data)
    msg = decoded.message
    packet = packet_fields(msg.onion)
    if args.json:
        _emit_json(
            {
                "type": ONION_MESSAGE_TYPE if decoded.typed else None,
                "path_key": msg.path_key.hex(),
                "packet": packet,
                "extension_length": len(decoded.extension),
                "size": len(msg.path_key) + len(msg.onion),
            }
        )
        return 0
    fields = [
        (
            "type",
            f"{ONION_MESSAGE_TYPE} (onion_message)" if decoded.typed else "none given (body only)",
        ),
        ("path key", msg.path_key.hex()),
        *_packet_lines(packet),
        ("extension TLVs", f"{len(decoded.extension)} bytes" if decoded.extension else "none"),
    ]
    print(render_fields(fields))
    return 0


# --------------------------------------------------------------------------- events


def _event_json(e: Event) -> dict[str, Any]:
    return {
        "stream_id": e.stream_id,
        "at": _opt(e.at),
        "kind": e.kind,
        "peer": e.peer.hex() if e.peer else None,
        "id": e.message_id or None,
        "size": e.size,
        "reason": e.reason or None,
    }


def _event_line(e: Event, as_json: bool) -> str:
    if as_json:
        return json.dumps(_event_json(e))
    parts = [format_time(e.at), f"{e.kind:<9}", _peer_label(e.peer)]
    if e.message_id:
        parts.append(f"id={e.message_id}")
    if e.size:
        parts.append(f"size={e.size}")
    if e.reason:
        parts.append(f"reason={e.reason}")
    return "  ".join(parts)


async def cmd_events(s: Session, args: argparse.Namespace) -> int:
    store = await s.store()
    as_json: bool = args.json
    count: int = args.count
    recent = await store.recent_events(count) if count else []
    for e in recent:
        print(_event_line(e, as_json), flush=True)
    if not args.follow:
        if not recent and not as_json:
            _error("no events")
        return 0
    # Start after the last event there is now: nothing published from here on is missed.
    if recent:
        last = recent[-1].stream_id
    else:
        latest = await store.recent_events(1)
        last = latest[-1].stream_id if latest else "0-0"
    left: int | None = args.exit_after
    while left is None or left > 0:
        batch = await store.read_events(
            last, count=100 if left is None else min(left, 100), block_ms=FOLLOW_BLOCK_MS
        )
        for e in batch:
            print(_event_line(e, as_json), flush=True)
            last = e.stream_id
        if left is not None:
            left -= len(batch)
    return 0


_COMMANDS: dict[str, Handler] = {
    "status": cmd_status,
    "peers": cmd_peers,
    "show": cmd_show,
    "allow": cmd_allow,
    "purge": cmd_purge,
    "deliver": cmd_deliver,
    "decode": cmd_decode,
    "events": cmd_events,
}


if __name__ == "__main__":
    raise SystemExit(main())
