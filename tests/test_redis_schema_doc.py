"""docs/redis-schema.md and the store agree: every key the store creates is in the document's
table (and every key in the table is created), nothing but the documented persistent keys
is left without a TTL, and the record layout and default caps match the code."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from lndmailbox.store import (
    HEADER_SIZE,
    RECORD_VERSION,
    Limits,
    NewEntry,
    Store,
    StoredMessage,
    encode_record,
)
from tests.store_helpers import put_one

DOC = Path(__file__).resolve().parent.parent / "docs" / "redis-schema.md"
NOW = 1_700_000_000.0
NODE = bytes.fromhex("02" + "ab" * 32)
HEX66 = "[0-9a-f]{66}"


@dataclasses.dataclass(frozen=True)
class DocumentedKey:
    pattern: str
    type: str
    ttl: str

    @property
    def persistent(self) -> bool:
        return self.ttl.startswith("none")

    def matches(self, key: str) -> bool:
        regex = re.escape(self.pattern).replace("<node>", HEX66).replace("<peer>", HEX66)
        return re.fullmatch(regex, key) is not None


def section(title: str) -> list[str]:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None].splitlines()


def table_rows(title: str) -> list[list[str]]:
    rows = []
    for line in section(title):
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def documented_keys() -> list[DocumentedKey]:
    keys = []
    for row in table_rows("Keys"):
        pattern = row[0].strip("`")
        keys.append(DocumentedKey(pattern=pattern, type=row[1], ttl=row[2]))
    return keys


def pubkey() -> bytes:
    return b"\x02" + os.urandom(32)


async def scenario(client: aioredis.Redis) -> Store:
    """Everything the daemon and mailboxctl do, once."""
    store = Store(client, NODE, Limits(max_messages_per_peer=2, ttl=600))
    alice, bob, carol = pubkey(), pubkey(), pubkey()
    await store.allowlist.add([alice, bob, carol])
    for i in range(3):  # the third evicts the first
        await put_one(store, bob, alice, pubkey(), os.urandom(1366), NOW + i)
    path_key, onion = pubkey(), os.urandom(1366)
    await put_one(store, carol, alice, path_key, onion, NOW)
    await put_one(store, carol, alice, path_key, onion, NOW + 1)  # duplicate
    await put_one(store, alice, bob, pubkey(), os.urandom(500), NOW, ttl=5)
    ready, _ = await store.queues.peek(bob, NOW + 10, limit=10)
    assert await store.queues.remove(ready[0])  # refused too often
    assert await store.queues.record_attempt(ready[1]) == 1
    (carols,) = (await store.queues.peek(carol, NOW + 10))[0]
    assert await store.queues.move_delivered([carols], int(NOW * 1000) + 10) == 1  # unconfirmed
    assert len(await store.queues.sweep_expired(NOW + 10)) == 1  # alice's short-lived message
    await store.events.record(counters={"stored": 4})
    await store.events.record(events=[("stored", bob, ready[0].id, ready[0].size, "")])
    await store.events.record(
        counters={"delivered": 1}, events=[("delivered", bob, ready[0].id, 1, "")]
    )
    assert await store.control.acquire_lock("daemon-1", lease=15)
    await store.control.write_heartbeat(
        {"pid": 1, "host": "lsp", "started_at": NOW, "version": "0"}, ttl=30
    )
    await store.control.write_daemon("daemon-2", {"role": "standby", "pid": 2}, stale=5, ttl=10)
    await store.control.request_delivery(carol)
    await store.journal.write(
        [
            NewEntry("e1", alice, pubkey(), os.urandom(1366), NOW),
            NewEntry("e2", alice, pubkey(), b"x", NOW),
        ]
    )
    await store.journal.write(decided=["e1"])  # e2 is left undecided
    assert len(await store.journal.pending()) == 1
    now_ms = int(NOW * 1000)
    hook = "https://push.example.com/wake?token=t"
    for peer in (alice, bob):
        await store.webhooks.set(peer, "wallet", hook, max_webhooks=10, now_ms=now_ms)
    await store.webhooks.touch([alice, carol], now_ms=now_ms + 1)
    assert await store.webhooks.remove(bob, "wallet", now_ms=now_ms + 2)  # bob: no client
    return store


async def all_keys(client: aioredis.Redis) -> list[str]:
    return sorted([key.decode() async for key in client.scan_iter(count=1000)])


def test_doc_key_table_is_parsed() -> None:
    keys = documented_keys()
    assert len(keys) >= 10
    assert {k.type for k in keys} <= {"list", "hash", "sorted set", "set", "stream", "string"}
    assert {k.pattern for k in keys if k.persistent} == {
        "lndmailbox:{<node>}:allow",
        "lndmailbox:{<node>}:counters",
        "lndmailbox:{<node>}:events",
        "lndmailbox:{<node>}:peer:<peer>:webhooks",
        "lndmailbox:{<node>}:webhook_clients",
    }


async def test_every_key_the_store_creates_is_documented(redis_client: aioredis.Redis) -> None:
    await scenario(redis_client)
    documented = documented_keys()
    seen: set[str] = set()
    for key in await all_keys(redis_client):
        matching = [d for d in documented if d.matches(key)]
        assert len(matching) == 1, f"{key} matches {len(matching)} documented patterns"
        raw = await redis_client.type(key)
        kind = raw.decode() if isinstance(raw, bytes) else raw
        assert {"zset": "sorted set"}.get(kind, kind) == matching[0].type, key
        seen.add(matching[0].pattern)
    assert seen == {d.pattern for d in documented}, "documented keys the store never made"


async def test_nothing_without_ttl_but_the_persistent_keys(redis_client: aioredis.Redis) -> None:
    await scenario(redis_client)
    documented = documented_keys()
    for key in await all_keys(redis_client):
        (doc,) = [d for d in documented if d.matches(key)]
        ttl = await redis_client.pttl(key)
        if doc.persistent:
            assert ttl == -1, f"{key} is documented as persistent"
        else:
            assert ttl > 0, f"{key} has no TTL"


async def test_drained_peer_leaves_nothing(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, NODE)
    peer = pubkey()
    for i in range(3):
        await put_one(store, peer, pubkey(), pubkey(), os.urandom(1366), NOW + i)
    ready, _ = await store.queues.peek(peer, NOW, limit=10)
    sent_ms = int(NOW * 1000)
    assert await store.queues.move_delivered(ready, sent_ms) == 3
    confirmed = await store.queues.confirm(peer, [(m.id, sent_ms) for m in ready])
    assert confirmed == ready
    # only the node's history is kept: its counters and its (capped) event stream
    assert await all_keys(redis_client) == sorted([store.keys.counters_key, store.keys.events_key])


def test_record_layout_matches_the_code() -> None:
    rows = table_rows("Records")
    msg = StoredMessage(
        id="018bcfe568000a1b2c3d",
        peer=pubkey(),
        sender=pubkey(),
        path_key=pubkey(),
        onion=os.urandom(1366),
        received_at=NOW,
        expires_at=NOW + 86400,
        attempts=3,
        redeliveries=2,
    )
    record = encode_record(msg)
    expected = {
        "version": bytes((RECORD_VERSION,)),
        "message id": bytes.fromhex(msg.id),
        "expires_at": (int(msg.expires_at * 1000)).to_bytes(6, "big"),
        "delivery attempts": (3).to_bytes(1, "big"),
        "redeliveries": (2).to_bytes(1, "big"),
        "sender": msg.sender,
        "path_key": msg.path_key,
        "onion packet": msg.onion,
    }
    offset = 0
    for (start, length, field), (name, value) in zip(rows, expected.items(), strict=True):
        assert field.startswith(name), (field, name)
        assert int(start) == offset
        size = len(record) - offset if length == "rest" else int(length)
        assert record[offset : offset + size] == value, name
        offset += size
    assert offset == len(record)
    assert int(rows[6][0]) == HEADER_SIZE, "path_key starts right after the header"
    assert f"`0x{RECORD_VERSION:02x}`" in rows[0][2]


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Limits)])
def test_caps_table_matches_limits_defaults(field: str) -> None:
    values = {row[0].strip("`"): row[3].strip("`") for row in table_rows("Caps")}
    assert float(values[field]) == getattr(Limits(), field)
