"""Fills a mailbox with the old release's own code: run as a script under that release's
``lndmailbox`` (tests/old_release.py puts it first on PYTHONPATH), never imported.

Reads a plan (JSON) on stdin and writes to Redis through that release's ``Store`` only:
the allowlist, messages queued (a list of puts, each a batch), the first messages of some
peers handed to lnd (unconfirmed), counters and a summary, a delivery request, journal
entries left undecided and one decided, and optionally the old lock held. Prints (JSON)
where its ``lndmailbox`` came from, so the caller can check it ran the old code.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import lndmailbox
from lndmailbox.store import Limits, NewEntry, NewMessage, Store


def _b(text: str) -> bytes:
    return bytes.fromhex(text)


async def fill(plan: dict[str, Any]) -> None:
    limits = Limits(ttl=plan["ttl"], max_messages_per_peer=plan["max_messages_per_peer"])
    store = Store.from_url(plan["redis_url"], _b(plan["node"]), limits)
    try:
        if plan["allow"]:
            await store.allowlist.add([_b(p) for p in plan["allow"]])
        for batch in plan["puts"]:
            await store.queues.put_many(
                [
                    NewMessage(
                        _b(m["peer"]), _b(m["sender"]), _b(m["path_key"]), _b(m["onion"]), m["now"]
                    )
                    for m in batch
                ]
            )
        for peer, count in plan["deliver"].items():
            ready, _ = await store.queues.peek(_b(peer), plan["now"], limit=count)
            await store.queues.move_delivered(ready, int(plan["now"] * 1000))
        summary = [(k, r, _b(w), n) for k, r, w, n in plan["summary"]]
        await store.events.record(counters=plan["counters"], summary=summary)
        for peer in plan["delivery_requests"]:
            await store.control.request_delivery(_b(peer))
        entries = [
            NewEntry(
                e["entry"],
                _b(e["sender"]),
                _b(e["path_key"]),
                _b(e["onion"]),
                e["received_at"],
                _b(e["encrypted_recipient_data"]),
            )
            for e in plan["journal"]
        ]
        await store.journal.write(entries)
        if plan["decided"]:
            await store.journal.write(decided=plan["decided"])
        if plan["lock"]:
            assert await store.control.acquire_lock(plan["lock"], lease=600)
    finally:
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(fill(json.load(sys.stdin)))
    print(json.dumps({"lndmailbox": lndmailbox.__file__}))
