"""The node's counters and its event stream (what happened to which message, and when).

The queue scripts count and publish their own outcomes in the same step as the change;
:meth:`Events.record` is for everything else the daemon counts (drops, failures...).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from lndmailbox.errors import RecordError
from lndmailbox.store import lua
from lndmailbox.store.client import as_items, as_str, redis_errors
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import Event, event_time

log = logging.getLogger(__name__)

NewEvent = tuple[str, bytes | None, str, int, str]
"""An event to append: (kind, peer, message id, size, reason)."""


class Events:
    """Counters (a hash of name to count) and the event stream, capped near ``events_maxlen``."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, events_maxlen: int) -> None:
        self.redis = redis
        self.keys = keys
        self.events_maxlen = events_maxlen
        self._record = redis.register_script(lua.program("record"))

    @redis_errors
    async def record(
        self,
        counters: Mapping[str, int] | None = None,
        events: Sequence[NewEvent] = (),
        *,
        at: float | None = None,
    ) -> None:
        """Adds to several counters and appends several events (kind, peer, message id, size,
        reason) in one script, so a batch lands whole or not at all (a connection lost after
        the script went out leaves it unknown: a retry may then count twice)."""
        counted = [(name, by) for name, by in (counters or {}).items() if by]
        if not counted and not events:
            return
        args: list[str | int] = [self.events_maxlen, event_time(at), len(counted)]
        for name, by in counted:
            args += (name, by)
        for kind, peer, message_id, size, reason in events:
            args += (kind, peer.hex() if peer else "", message_id, size, reason)
        await self._record(keys=[self.keys.counters_key, self.keys.events_key], args=args)

    @redis_errors
    async def counters(self) -> dict[str, int]:
        """Every counter ("stored", "delivered", "expired", "dropped:<reason>"...), by name."""
        raw = await self.redis.hgetall(self.keys.counters_key)
        return {as_str(k): int(v) for k, v in sorted(raw.items())}

    @redis_errors
    async def read(
        self, last_id: str = "0-0", count: int = 100, block_ms: int | None = None
    ) -> list[Event]:
        """Events after ``last_id`` ("0-0": from the oldest kept; "$": only new ones, which
        makes sense with ``block_ms``), at most ``count``; waits up to ``block_ms`` for one."""
        reply: Any = await self.redis.xread(
            {self.keys.events_key: last_id}, count=count, block=block_ms
        )
        out: list[Event] = []
        for _stream, entries in as_items(reply):
            out.extend(_event(sid, fields) for sid, fields in as_items(entries))
        return out

    @redis_errors
    async def recent(self, count: int = 20) -> list[Event]:
        """The latest ``count`` events, oldest first."""
        entries = as_items(await self.redis.xrevrange(self.keys.events_key, count=count))
        return [_event(sid, fields) for sid, fields in reversed(entries)]


def _event(stream_id: object, raw: object) -> Event:
    if not isinstance(raw, Mapping):
        raise RecordError(f"unreadable event {stream_id!r}")
    f = {as_str(k): as_str(v) for k, v in raw.items()}
    sid = as_str(stream_id)
    try:
        at = float(f["at"]) if f.get("at") else int(sid.split("-")[0]) / 1000
        return Event(
            stream_id=sid,
            kind=f.get("kind", ""),
            peer=bytes.fromhex(f["peer"]) if f.get("peer") else None,
            message_id=f.get("id", ""),
            size=int(f.get("size") or 0),
            reason=f.get("reason", ""),
            at=at,
        )
    except ValueError as e:
        raise RecordError(f"unreadable event {sid}: {e}") from e
