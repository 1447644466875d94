"""One peer's held mail (queued, or delivered and unconfirmed): ``show`` it, ``purge`` it, or
ask the daemon to ``deliver`` it now."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from lndmailbox.cli.errors import CtlError
from lndmailbox.cli.output import emit_json, json_time, say
from lndmailbox.cli.render import (
    format_age,
    format_bytes,
    format_time,
    format_until,
    packet_lines,
    plural,
    render_fields,
)
from lndmailbox.cli.session import Session
from lndmailbox.onion.inspect import packet_fields
from lndmailbox.store import StoredMessage, Unconfirmed

__all__ = ["PURGE_REASON", "run_deliver", "run_purge", "run_show"]

log = logging.getLogger(__name__)

PURGE_REASON = "purged"
"""Drop reason of messages an operator purged (counter ``dropped:purged``, event reason)."""


# --------------------------------------------------------------------------- show


async def run_show(s: Session, args: argparse.Namespace) -> int:
    """Everything held for the peer, in held order: what lnd took and the peer has not
    confirmed first (it goes back to the front of the queue if the peer leaves), marked,
    then the queue, oldest first (the order it will be delivered)."""
    now = s.now()
    store = await s.store()
    peer: bytes = args.peer
    unconfirmed = await store.queues.unconfirmed(peer)
    queued = await store.queues.messages(peer)
    held: list[tuple[StoredMessage, Unconfirmed | None]] = [
        *((u.message, u) for u in unconfirmed),
        *((m, None) for m in queued),
    ]
    if args.json:
        emit_json(
            {
                "peer": peer.hex(),
                "allowed": await store.allowlist.contains(peer),
                "messages": [_message_json(m, u, now, args.decode) for m, u in held],
            }
        )
    elif held:
        total = format_bytes(sum(m.size for m, _ in held))
        head = f"{plural(len(held), 'message')} ({total})"
        if unconfirmed:
            head += (
                f" held for {peer.hex()}: {len(unconfirmed)} delivered and unconfirmed, "
                f"{len(queued)} queued"
            )
        else:
            head += f" queued for {peer.hex()}"
        blocks = [head, *(_message_block(m, u, now, args.decode) for m, u in held)]
        print("\n\n".join(blocks))
    else:
        print(f"nothing queued for {peer.hex()}")
    return 0


def _message_json(
    m: StoredMessage, unconfirmed: Unconfirmed | None, now: float, decode: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": m.id,
        "state": "queued" if unconfirmed is None else "unconfirmed",
        "size": m.size,
        "sender": m.sender.hex(),
        "received_at": json_time(m.received_at),
        "expires_at": json_time(m.expires_at),
        "expired": m.expired(now),
    }
    if unconfirmed is not None:
        out["delivered_at"] = json_time(unconfirmed.sent_at)
    out.update(
        {
            "redeliveries": m.redeliveries,
            "attempts": m.attempts,
            "path_key": m.path_key.hex(),
        }
    )
    if decode:
        out["packet"] = packet_fields(m.onion)
    return out


def _message_block(
    m: StoredMessage, unconfirmed: Unconfirmed | None, now: float, decode: bool
) -> str:
    expires = (
        "expired, waiting for the sweep" if m.expired(now) else format_until(m.expires_at, now)
    )
    fields = [
        ("size", f"{m.size} bytes"),
        ("from", m.sender.hex()),
        ("received", f"{format_time(m.received_at)} ({format_age(m.received_at, now)} ago)"),
        ("expires", f"{format_time(m.expires_at)} ({expires})"),
    ]
    title = f"message {m.id}"
    if unconfirmed is not None:
        title += " (delivered, unconfirmed)"
        sent = unconfirmed.sent_at
        delivered = f"{format_time(sent)} ({format_age(sent, now)} ago), waiting for confirmation"
        fields.append(("delivered", delivered))
    if unconfirmed is not None or m.redeliveries:
        fields.append(("redeliveries", str(m.redeliveries)))
    fields += [("attempts", str(m.attempts)), ("path key", m.path_key.hex())]
    if decode:
        fields.extend(packet_lines(packet_fields(m.onion)))
    return f"{title}\n{render_fields(fields, indent=2)}"


# --------------------------------------------------------------------------- purge


async def run_purge(s: Session, args: argparse.Namespace) -> int:
    """Deletes after a yes on the terminal (or ``--yes``); a purge counts as a drop."""
    store = await s.store()
    peer: bytes = args.peer
    message_id: str | None = args.id
    held = await store.queues.held(peer)  # delivered and unconfirmed ones too
    targets = [m for m in held if message_id is None or m.id == message_id]
    if not targets:
        if message_id is not None:
            raise CtlError(f"no message {message_id} is queued for {peer.hex()}")
        if args.json:
            emit_json({"peer": peer.hex(), "purged": 0})
        else:
            print(f"nothing queued for {peer.hex()}")
        return 0
    what = f"message {message_id}" if message_id else f"all {plural(len(targets), 'message')}"
    if not args.yes:
        if not _stdin_is_tty():
            raise CtlError(
                f"not deleting {what} of {peer.hex()} without confirmation: "
                "stdin is not a terminal, pass --yes"
            )
        if not _confirm(f"Delete {what} queued for {peer.hex()}? [y/N] "):
            say("nothing deleted")
            return 1
    removed = await store.queues.purge(peer, message_id)
    if removed:
        # Purged messages are dropped messages: counted and told like the daemon's drops.
        await store.events.record(
            {f"dropped:{PURGE_REASON}": removed},
            [("dropped", peer, m.id, m.size, PURGE_REASON) for m in targets[:removed]],
        )
    log.debug("purged %d messages of %s", removed, peer.hex())
    if args.json:
        emit_json({"peer": peer.hex(), "purged": removed})
    else:
        print(f"purged {plural(removed, 'message')} of {peer.hex()}")
    return 0


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


def _confirm(prompt: str) -> bool:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


# --------------------------------------------------------------------------- deliver


async def run_deliver(s: Session, args: argparse.Namespace) -> int:
    """Queues a delivery request for the daemon; notes on stderr when it will not help now."""
    store = await s.store()
    peer: bytes = args.peer
    await store.control.request_delivery(peer)
    queued = len(await store.queues.messages(peer))
    running = (
        await store.control.read_heartbeat() is not None
        or await store.control.lock_owner() is not None
    )
    if args.json:
        emit_json(
            {"peer": peer.hex(), "requested": True, "queued": queued, "daemon_running": running}
        )
    else:
        print(
            f"asked the daemon to deliver to {peer.hex()} now ({plural(queued, 'message')} queued)"
        )
    if not running:
        say("no daemon is running for this node: the request waits (up to an hour) for one")
    elif not queued:
        say(f"nothing is queued for {peer.hex()}")
    return 0
