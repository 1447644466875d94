"""The store's invariant check, for tests (the crash test runs it after every kill).

Not used by the daemon: one SCAN and a read of every queue, too slow for production.
"""

from __future__ import annotations

import logging

from lndmailbox.store.client import as_bytes, as_str, redis_errors
from lndmailbox.store.handle import Store
from lndmailbox.store.queues import decode
from lndmailbox.store.records import StoredMessage, decode_unconfirmed

log = logging.getLogger(__name__)


@redis_errors
async def audit(store: Store) -> list[str]:
    """Consistency problems between the peers' queues and unconfirmed lists and the node's
    indexes (none: [])."""
    redis, keys = store.redis, store.keys
    held: dict[bytes, list[StoredMessage]] = {}
    problems: list[str] = []
    # Held order: a peer's unconfirmed messages, then its queue.
    async for key in redis.scan_iter(match=keys.unconfirmed_pattern, count=500):
        peer = keys.peer_of_unconfirmed(as_str(key))
        entries = [decode_unconfirmed(peer, as_bytes(e)) for e in await redis.lrange(key, 0, -1)]
        if any(u.sent_at <= 0 for u in entries):
            problems.append(f"an unconfirmed message of {peer.hex()} has no send time")
        held.setdefault(peer, []).extend(u.message for u in entries)
    async for key in redis.scan_iter(match=keys.queue_pattern, count=500):
        peer = keys.peer_of_queue(as_str(key))
        held.setdefault(peer, []).extend(decode(peer, r) for r in await redis.lrange(key, 0, -1))
    usage = {as_str(k): int(v) for k, v in (await redis.hgetall(keys.usage_key)).items()}
    mail = {bytes.fromhex(as_str(m)) for m in await redis.zrange(keys.mail_key, 0, -1)}
    total_n = total_b = 0
    for peer, msgs in held.items():
        n, b = len(msgs), sum(m.size for m in msgs)
        total_n, total_b = total_n + n, total_b + b
        if usage.get(f"messages:{peer.hex()}") != n or usage.get(f"bytes:{peer.hex()}") != b:
            problems.append(f"usage of {peer.hex()} is not {n} messages / {b} bytes")
        if peer not in mail:
            problems.append(f"{peer.hex()} has mail but is not in the mail index")
        dedup = await redis.hgetall(keys.dedup_key(peer))
        if sorted(as_str(v) for v in dedup.values()) != sorted(m.id for m in msgs):
            problems.append(f"dedup of {peer.hex()} does not match its messages")
        if len({m.id for m in msgs}) != n:
            problems.append(f"{peer.hex()} has repeated ids")
    if (usage.get("messages", 0), usage.get("bytes", 0)) != (total_n, total_b):
        problems.append(f"node totals are not {total_n} messages / {total_b} bytes")
    for peer in mail - held.keys():
        problems.append(f"{peer.hex()} is in the mail index without mail held")
    return problems
