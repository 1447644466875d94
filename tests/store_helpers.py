"""Store helpers for the tests: one message through the production path."""

from __future__ import annotations

from lndmailbox.store import NewMessage, PutResult, Store


async def put_one(
    store: Store,
    peer: bytes,
    sender: bytes,
    path_key: bytes,
    onion: bytes,
    now: float,
    *,
    ttl: float | None = None,
) -> PutResult:
    """Queues one message with :meth:`Queues.put_many` (what the daemon calls); its result."""
    (result,) = await store.queues.put_many(
        [NewMessage(peer, sender, path_key, onion, now)], ttl=ttl
    )
    return result
