"""``mailboxctl events [--count N] [--follow [--exit-after N]]``: the node's event stream.

The latest ``--count`` events, oldest first; ``--follow`` then prints new ones as they come
(a blocking XREAD, like ``tail -f``). With ``--json``, one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from lndmailbox.cli.output import json_time, say
from lndmailbox.cli.render import format_time
from lndmailbox.cli.session import Session
from lndmailbox.store import Event, Store

__all__ = ["FOLLOW_BLOCK_MS", "event_json", "event_line", "run_events"]

log = logging.getLogger(__name__)

FOLLOW_BLOCK_MS = 5_000
"""How long one XREAD of ``events --follow`` waits before asking again."""

_FOLLOW_BATCH = 100
SUMMARY = "summary"


def event_json(e: Event) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "stream_id": e.stream_id,
        "at": json_time(e.at),
        "kind": e.kind,
        "peer": e.peer.hex() if e.peer else None,
        "id": e.message_id or None,
        "size": e.size,
        "reason": e.reason or None,
    }
    if e.kind == SUMMARY:
        doc.update(
            of=e.of,
            count=e.count,
            peers=e.peers,
            top=[{"peer": who.hex(), "count": n} for who, n in e.top],
            since=json_time(e.since) if e.since is not None else None,
        )
    return doc


def event_line(e: Event, as_json: bool) -> str:
    """One event as one line: JSON, or ``time  kind  peer  id=...  size=...  reason=...``
    (a summary: ``time  summary  of=...  reason=...  count=...  peers=...  top=hex:n,...``)."""
    if as_json:
        return json.dumps(event_json(e))
    if e.kind == SUMMARY:
        parts = [format_time(e.at), f"{e.kind:<9}", f"of={e.of}"]
        if e.reason:
            parts.append(f"reason={e.reason}")
        parts += [f"count={e.count}", f"peers={e.peers}"]
        if e.top:
            parts.append("top=" + ",".join(f"{who.hex()}:{n}" for who, n in e.top))
        return "  ".join(parts)
    parts = [format_time(e.at), f"{e.kind:<9}", e.peer.hex() if e.peer else "-"]
    if e.message_id:
        parts.append(f"id={e.message_id}")
    if e.size:
        parts.append(f"size={e.size}")
    if e.reason:
        parts.append(f"reason={e.reason}")
    return "  ".join(parts)


async def run_events(s: Session, args: argparse.Namespace) -> int:
    store = await s.store()
    as_json: bool = args.json
    count: int = args.count
    recent = await store.events.recent(count) if count else []
    for e in recent:
        print(event_line(e, as_json), flush=True)
    if not args.follow:
        if not recent and not as_json:
            say("no events")
        return 0
    # Start after the last event there is now: nothing published from here on is missed.
    if recent:
        last = recent[-1].stream_id
    else:
        latest = await store.events.recent(1)
        last = latest[-1].stream_id if latest else "0-0"
    await _follow(store, last, args.exit_after, as_json)
    return 0


async def _follow(store: Store, last: str, left: int | None, as_json: bool) -> None:
    """Prints every event after ``last`` as it comes, until ``left`` (if given) were printed."""
    while left is None or left > 0:
        batch = await store.events.read(
            last,
            count=_FOLLOW_BATCH if left is None else min(left, _FOLLOW_BATCH),
            block_ms=FOLLOW_BLOCK_MS,
        )
        for e in batch:
            print(event_line(e, as_json), flush=True)
            last = e.stream_id
        if left is not None:
            left -= len(batch)
