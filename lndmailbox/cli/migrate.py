"""``mailboxctl migrate [--to URL [--overwrite]]``: the node's mailbox moved.

Without ``--to``: from the old key layout into this release's, on the same Redis (what a
daemon of this release does when it takes the lead). With ``--to``: to another Redis
deployment, while no daemon of the node runs on either side; the copy is checked before
the source is removed.
"""

from __future__ import annotations

import argparse
import logging

from lndmailbox.cli.output import emit_json
from lndmailbox.cli.session import Session
from lndmailbox.logs import scrub_text
from lndmailbox.store import Store, move_mailbox

__all__ = ["run_migrate"]

log = logging.getLogger(__name__)


async def run_migrate(s: Session, args: argparse.Namespace) -> int:
    store = await s.store()
    moved = await store.layout.run()
    if args.to is None:
        if args.json:
            emit_json({"layout": moved.as_dict()})
        else:
            print(moved.describe())
        return 0
    where = scrub_text(args.to)
    async with Store.from_url(args.to, store.node) as destination:
        copied = await move_mailbox(store, destination, overwrite=args.overwrite)
    if args.json:
        emit_json(
            {
                "layout": moved.as_dict(),
                "to": where,
                "keys": copied.keys,
                "payload_bytes": copied.payload_bytes,
                "replaced": copied.replaced,
            }
        )
        return 0
    if moved:
        print(f"old key layout: {moved.describe()}")
    replaced = f" (replacing the {copied.replaced} keys it held)" if copied.replaced else ""
    print(
        f"copied {copied.keys} keys ({copied.payload_bytes} bytes dumped) of node "
        f"{store.node.hex()} to {where}{replaced}, checked each, and removed them here"
    )
    return 0
