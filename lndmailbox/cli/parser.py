"""``mailboxctl``'s command line: the commands, their arguments, and the checks on them.

The connection settings are the daemon's own (:func:`lndmailbox.config.add_arguments`), so
``mailboxctl`` finds the same Redis and lnd. ``--json`` and ``--node`` are accepted before
or after the command.
"""

from __future__ import annotations

import argparse
import logging
import string

from coincurve import PublicKey

from lndmailbox import __version__
from lndmailbox.cli.errors import UsageError
from lndmailbox.cli.output import PROG
from lndmailbox.config import add_arguments
from lndmailbox.lsps.lsps5 import MAX_APP_NAME_BYTES
from lndmailbox.onion.tlv import POINT_LEN

__all__ = [
    "app_name_arg",
    "build_parser",
    "count_arg",
    "hex_arg",
    "message_id_arg",
    "parse_hex",
    "pubkey_arg",
]

log = logging.getLogger(__name__)

_HEX = frozenset(string.hexdigits)
_MESSAGE_ID_LEN = 20


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
    """A count argument: a whole number, zero or more."""
    try:
        n = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from e
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return n


def limit_arg(text: str) -> int:
    """A limit argument: a whole number, one or more."""
    n = count_arg(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return n


def app_name_arg(text: str) -> str:
    """An LSPS5 app_name, exactly as given: UTF-8 of at most 64 bytes (bLIP-55)."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:  # bytes that are not UTF-8 reach argv as surrogates
        raise argparse.ArgumentTypeError("an app name must be UTF-8") from e
    if size > MAX_APP_NAME_BYTES:
        raise argparse.ArgumentTypeError(
            f"an app name is at most {MAX_APP_NAME_BYTES} bytes of UTF-8, got {size}"
        )
    return text


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
    """The whole command line; the chosen command is ``args.command``."""
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
    _add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def _late_options() -> argparse.ArgumentParser:
    """``--json`` and ``--node`` once more, for after the command.

    Their defaults are SUPPRESS, so that a subcommand that was not given them leaves the
    values from before the command alone.
    """
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    late.add_argument(
        "--node",
        type=pubkey_arg,
        default=argparse.SUPPRESS,
        metavar="PUBKEY",
        help="the lnd node whose mailbox to open (default: the node lnd reports)",
    )
    return late


def _add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    late = _late_options()

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[late], help=help_text, description=help_text)

    command("status", "Redis, lnd, the daemon and what is queued, at a glance")
    p = command("peers", "every peer with mail: online, messages, bytes, ages, allowed")
    p.add_argument(
        "--limit",
        type=limit_arg,
        default=None,
        metavar="N",
        help="only the N peers whose mail expires first (default: every peer)",
    )

    p = command("show", "the messages held for one peer: unconfirmed, then queued")
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

    p = command("webhooks", "the clients' LSPS5 webhooks (their URLs are never shown)")
    hooks = p.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    a = hooks.add_parser(
        "list",
        parents=[late],
        help="every client with webhooks, or one client's webhooks",
        description="every client with webhooks, or one client's webhooks",
    )
    a.add_argument(
        "peer", type=pubkey_arg, nargs="?", default=None, metavar="PEER", help="only this client"
    )
    a = hooks.add_parser(
        "remove",
        parents=[late],
        help="remove one webhook of a client",
        description="remove one webhook of a client (safe while the daemon runs)",
    )
    a.add_argument("peer", type=pubkey_arg, metavar="PEER")
    a.add_argument("app_name", type=app_name_arg, metavar="APP", help="its app_name, as listed")

    p = command(
        "migrate",
        "move the mailbox from the old key layout; with --to, to another Redis (no daemon running)",
    )
    p.add_argument(
        "--to",
        default=None,
        metavar="URL",
        help="copy the node's mailbox to the Redis at URL, check it, remove it here",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="with --to: replace what the destination holds of the node",
    )

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
        type=limit_arg,
        default=None,
        metavar="N",
        help="with --follow: stop after N new events",
    )
