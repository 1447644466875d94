"""``mailboxctl allow add|remove|list``: the peers the mailbox keeps mail for."""

from __future__ import annotations

import argparse
import logging

from lndmailbox.cli.output import emit_json
from lndmailbox.cli.render import plural
from lndmailbox.cli.session import Session

__all__ = ["run_allow"]

log = logging.getLogger(__name__)


async def run_allow(s: Session, args: argparse.Namespace) -> int:
    store = await s.store()
    action: str = args.allow_command
    if action == "list":
        peers = await store.allowlist.members()
        if args.json:
            emit_json({"allowlist": [p.hex() for p in peers]})
        elif peers:
            print("\n".join(p.hex() for p in peers))
        else:
            print("the allowlist is empty")
        return 0
    chosen: list[bytes] = list(dict.fromkeys(args.peers))
    if action == "add":
        changed = await store.allowlist.add(chosen)
        verb, unchanged = "added", "already allowed"
    else:
        changed = await store.allowlist.remove(chosen)
        verb, unchanged = "removed", "were not on the allowlist"
    rest = len(chosen) - changed
    if args.json:
        emit_json({verb: changed, "unchanged": rest, "peers": [p.hex() for p in chosen]})
    else:
        print(f"{verb} {plural(changed, 'peer')}" + (f", {rest} {unchanged}" if rest else ""))
    return 0
