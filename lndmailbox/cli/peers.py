"""``mailboxctl peers``: every peer with mail (or the first ``--limit``), the one whose mail
expires first first.

Online status comes from lnd (ListPeers) when lnd is reachable and serves the node shown;
otherwise it is unknown (``?``, JSON ``null``) and a note on stderr says why.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from lndmailbox.cli.output import emit_json, json_time, say
from lndmailbox.cli.render import format_age, format_bytes, format_until, render_table
from lndmailbox.cli.session import Session
from lndmailbox.errors import MailboxError

__all__ = ["run_peers"]

log = logging.getLogger(__name__)

_HEADERS = ["PEER", "ONLINE", "MSGS", "BYTES", "OLDEST", "NEWEST", "NEXT EXPIRY", "ALLOWED"]


async def run_peers(s: Session, args: argparse.Namespace) -> int:
    now = s.now()
    store = await s.store()
    summaries = await store.queues.peer_summaries(limit=args.limit)
    allowed = set(await store.allowlist.members())
    online = await s.online_peers(store.node) if summaries else frozenset[bytes]()
    if isinstance(online, MailboxError):
        say(f"online status unknown: {online}")
    rows: list[dict[str, Any]] = [
        {
            "peer": p.peer.hex(),
            "online": None if isinstance(online, MailboxError) else p.peer in online,
            "messages": p.messages,
            "bytes": p.bytes,
            "oldest_received_at": json_time(p.oldest_received_at),
            "newest_received_at": json_time(p.newest_received_at),
            "next_expiry": json_time(p.next_expiry),
            "allowed": p.peer in allowed,
        }
        for p in summaries
    ]
    if args.json:
        known = not isinstance(online, MailboxError)
        emit_json({"node": store.node.hex(), "online_known": known, "peers": rows})
    elif rows:
        print(render_table(_HEADERS, [_table_row(row, now) for row in rows], right=(2, 3, 4, 5)))
    else:
        print("no peer has mail")
    return 0


def _table_row(row: dict[str, Any], now: float) -> list[str]:
    return [
        row["peer"],
        "?" if row["online"] is None else "yes" if row["online"] else "no",
        str(row["messages"]),
        format_bytes(row["bytes"]),
        format_age(row["oldest_received_at"], now),
        format_age(row["newest_received_at"], now),
        format_until(row["next_expiry"], now),
        "yes" if row["allowed"] else "no",
    ]
