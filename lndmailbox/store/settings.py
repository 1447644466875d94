"""What the daemon's and mailboxctl's settings ask of the store: which Redis, which limits."""

from __future__ import annotations

from lndmailbox.config import Settings
from lndmailbox.store.durability import ReplicaWait
from lndmailbox.store.embedded import embedded_socket_path
from lndmailbox.store.records import Limits


def redis_url_for(settings: Settings) -> str:
    """The Redis the settings name: --redis-url, or the embedded server's socket."""
    if settings.redis_url:
        return settings.redis_url
    return f"unix://{embedded_socket_path(settings.datadir)}?db=0"


def limits_for(settings: Settings) -> Limits:
    """The store's limits the settings ask for (--ttl and the caps)."""
    return Limits(
        ttl=settings.ttl,
        max_messages_per_peer=settings.max_messages_per_peer,
        max_bytes_per_peer=settings.max_bytes_per_peer,
        max_bytes_total=settings.max_bytes_total,
    )


def replica_wait_for(settings: Settings) -> ReplicaWait:
    """What the writes that matter wait for (--redis-wait-replicas, -timeout, -aof)."""
    return ReplicaWait(
        replicas=settings.redis_wait_replicas,
        timeout=settings.redis_wait_timeout,
        aof=settings.redis_wait_aof,
    )
