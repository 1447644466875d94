"""The node's counters and its event stream (what happened to which message, and when).

The queue scripts count and publish their own outcomes in the same step as the change;
:meth:`Events.record` is for everything else the daemon counts (drops, failures...).

What a peer's traffic alone can cause (drops, duplicates, a flooded peer's stores and
evictions) is not appended one entry per message: it is added to the interval's summary
(a hash), which :meth:`Events.record` with ``close=True`` turns into one ``summary`` entry
per kind and reason. The stream keeps ``keep`` seconds of entries (the message TTL) and
never much more than ``maxlen`` (:func:`stream_bound`, derived from the caps), so that the
entries about real mail stay for a TTL whatever peers send (docs/notifications.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from lndmailbox.errors import RecordError
from lndmailbox.store import lua
from lndmailbox.store.client import RedisClient, as_items, as_str, redis_errors
from lndmailbox.store.keys import Keys
from lndmailbox.store.records import Event, Limits, event_time

log = logging.getLogger(__name__)

NewEvent = tuple[str, bytes | None, str, int, str]
"""An event to append: (kind, peer, message id, size, reason)."""

SummaryAddition = tuple[str, str, bytes | None, int]
"""An addition to the interval's summary: (kind, reason, peer or sender, count)."""

STANDARD_MESSAGE_SIZE = 1399
"""path_key + a standard 1366-byte onion packet: what the stream's bound is counted in."""
SUMMARY_REASONS = 64
"""Summary entries one interval can append at most: one per kind and reason (32 today: the
drop reasons, duplicate, a flooded peer's stored and evicted, the lost reasons; with
LSPS5 17 more: its registrations, wake-ups and dropped requests)."""
DEFAULT_SUMMARY_INTERVAL = 60.0
WAKE_UPS_PER_INTERVAL = 64
"""Stores of flooded peers one interval may still tell one by one (``stored`` entry and
webhook), over all peers: each flooded peer's first in the interval (store/lua/put.lua)."""


def wake_argument(
    interval: float = DEFAULT_SUMMARY_INTERVAL, most: int = WAKE_UPS_PER_INTERVAL
) -> str:
    """The put script's wake-ups: a flooded peer's first store in each ``interval`` seconds
    of Redis's clock is told, at most ``most`` of them per interval over all peers."""
    return f"{max(int(interval), 1)} {most}"


def stream_bound(limits: Limits, summary_interval: float = DEFAULT_SUMMARY_INTERVAL) -> int:
    """The most entries one TTL of traffic can append, deliveries aside (docs/notifications.md):
    with N standard messages fitting under ``max_bytes_total``, at most 2N are stored and told
    one by one in a TTL, each with one removal entry, plus one removal for each of the N
    queued when the TTL began (5N); flooded peers' wake-ups, at most W per interval of
    Redis's clock (a TTL touches I + 1 of them), each with one removal entry; and one summary
    entry per reason per interval: ``5N + 2W(I + 1) + 64 I``."""
    n = limits.max_bytes_total // STANDARD_MESSAGE_SIZE
    intervals = math.ceil(limits.ttl / summary_interval)
    wake_ups = 2 * WAKE_UPS_PER_INTERVAL * (intervals + 1)
    return 5 * n + wake_ups + SUMMARY_REASONS * intervals


def trim_argument(maxlen: int, keep: float) -> str:
    """The ``trim`` the scripts append with: entries older than ``keep`` seconds go, and
    the stream is held near ``maxlen`` entries whatever their age."""
    return f"{maxlen} {max(int(keep * 1000), 1)}"


class Events:
    """Counters (a hash of name to count), the interval's summary and the event stream, which
    keeps ``events_keep`` seconds of entries and at most about ``events_maxlen``."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        events_maxlen: int,
        events_keep: float = Limits.ttl,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.events_maxlen = events_maxlen
        self.events_keep = events_keep
        self.trim = trim_argument(events_maxlen, events_keep)
        self._record = redis.register_script(lua.program("record"))

    @redis_errors
    async def record(
        self,
        counters: Mapping[str, int] | None = None,
        events: Sequence[NewEvent] = (),
        *,
        summary: Sequence[SummaryAddition] = (),
        close: bool = False,
        at: float | None = None,
    ) -> int:
        """Adds to several counters and to the interval's summary, and appends several events
        (kind, peer, message id, size, reason), in one script, so a batch lands whole or not
        at all (a connection lost after the script went out leaves it unknown: a retry may
        then count twice). ``close``: then ends the interval, appending its summary entries
        (how many is returned)."""
        counted = [(name, by) for name, by in (counters or {}).items() if by]
        added = [s for s in summary if s[3]]
        if not counted and not events and not added and not close:
            return 0
        args: list[str | int] = [self.trim, event_time(at), int(close), len(counted)]
        for name, by in counted:
            args += (name, by)
        args.append(len(added))
        for kind, reason, who, by in added:
            args += (kind, reason, who.hex() if who else "", by)
        for kind, peer, message_id, size, reason in events:
            args += (kind, peer.hex() if peer else "", message_id, size, reason)
        keys = [self.keys.counters_key, self.keys.events_key, self.keys.summary_key]
        return int(await self._record(keys=keys, args=args))

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
            of=f.get("of", ""),
            count=int(f.get("count") or 0),
            top=_top(f.get("top", "")),
            peers=int(f.get("peers") or 0),
            since=float(f["since"]) if f.get("since") else None,
        )
    except ValueError as e:
        raise RecordError(f"unreadable event {sid}: {e}") from e


def _top(text: str) -> tuple[tuple[bytes, int], ...]:
    """A summary's ``top`` field: ``hex:count`` pairs, comma-separated, largest first."""
    out = []
    for part in filter(None, text.split(",")):
        who, _, count = part.partition(":")
        out.append((bytes.fromhex(who), int(count)))
    return tuple(out)
