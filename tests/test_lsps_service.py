"""LSPS0 and LSPS5's methods, end to end: a peer's custom messages (type 37913) through
simnet's gRPC into the daemon, answered through SendCustomMessage, with a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from simnet import Personality, SimPeer

from lndmailbox.store.keys import Keys
from tests.daemon_harness import GENERATIONS, World, counted, wait_until, world
from tests.http_endpoint import MakeEndpoint
from tests.local_ca import LocalCa
from tests.lsps_signatures import INCOMING, REGISTERED, check_notification

HOOK = "https://push.example.com/v1/wake?token=s3cret-token"
OTHER_HOOK = "https://push.example.com/v1/wake?token=another-token"


def request(method: str, params: object = None, request_id: object = "r1") -> bytes:
    body: dict[str, object] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


async def ask(peer: SimPeer, payload: bytes) -> dict[str, Any]:
    """Sends ``payload`` from ``peer`` and returns the node's next answer, parsed."""
    before = len(peer.lsps_received())
    await peer.lsps_request(payload)
    async with asyncio.timeout(10):
        answers = await peer.wait_lsps(before + 1)
    answer: dict[str, Any] = json.loads(answers[before])
    assert answer["jsonrpc"] == "2.0"
    return answer


def error_of(answer: dict[str, Any]) -> int:
    assert "result" not in answer, answer
    code: int = answer["error"]["code"]
    return code


@GENERATIONS
async def test_list_protocols_says_lsps5(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with world(personality, redis_url, tmp_path, lsps5=True) as w:
        w.bob.connect()
        await w.start_daemon()
        answer = await ask(w.bob, request("lsps0.list_protocols", {}, "first"))
        assert answer == {"jsonrpc": "2.0", "id": "first", "result": {"protocols": [5]}}


@GENERATIONS
async def test_set_list_and_remove_webhooks(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with world(personality, redis_url, tmp_path, lsps5=True) as w:
        w.bob.connect()
        await w.start_daemon()
        set_hook = {"app_name": "wallet", "webhook": HOOK}
        answer = await ask(w.bob, request("lsps5.set_webhook", set_hook))
        assert answer["result"] == {"num_webhooks": 1, "max_webhooks": 10, "no_change": False}
        # Persisted before the answer went out.
        held = await w.store.webhooks.list(w.bob.pubkey)
        assert [(h.app_name, h.url) for h in held] == [("wallet", HOOK)]

        again = await ask(w.bob, request("lsps5.set_webhook", set_hook, "r2"))
        assert again == {
            "jsonrpc": "2.0",
            "id": "r2",
            "result": {"num_webhooks": 1, "max_webhooks": 10, "no_change": True},
        }
        replaced = await ask(
            w.bob, request("lsps5.set_webhook", {"app_name": "wallet", "webhook": OTHER_HOOK})
        )
        assert replaced["result"]["no_change"] is False
        assert [h.url for h in await w.store.webhooks.list(w.bob.pubkey)] == [OTHER_HOOK]

        await ask(w.bob, request("lsps5.set_webhook", {"app_name": "ünïcode 📱", "webhook": HOOK}))
        listed = await ask(w.bob, request("lsps5.list_webhooks", {}))
        assert listed["result"] == {"app_names": ["wallet", "ünïcode 📱"], "max_webhooks": 10}

        removed = await ask(w.bob, request("lsps5.remove_webhook", {"app_name": "wallet"}))
        assert removed["result"] == {}
        assert [h.app_name for h in await w.store.webhooks.list(w.bob.pubkey)] == ["ünïcode 📱"]
        gone = await ask(w.bob, request("lsps5.remove_webhook", {"app_name": "wallet"}))
        assert error_of(gone) == 1010
        assert gone["error"]["message"] == "app_name_not_found"


@GENERATIONS
async def test_every_error_is_answered_with_its_code(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with world(personality, redis_url, tmp_path, lsps5=True, lsps5_max_webhooks=2) as w:
        w.bob.connect()
        await w.start_daemon()
        cases: list[tuple[bytes, int, object]] = [
            (b"{not json", -32700, None),
            (b"\xff\xfe not utf-8", -32700, None),
            (b'{"jsonrpc":"2.0","id":"n","method":"lsps0.list_protocols\x00"}', -32700, None),
            (b"[" * 30_000 + b"]" * 30_000, -32600, None),  # over 4096 bytes: not parsed
            (b"[" * 2000 + b"]" * 2000, -32700, None),  # nested too deep for the parser
            (b"[]", -32600, None),
            (b'{"jsonrpc":"1.0","id":"v","method":"lsps0.list_protocols"}', -32600, "v"),
            (b'{"jsonrpc":"2.0","id":7,"method":"lsps0.list_protocols"}', -32600, None),
            (request("lsps9.make_coffee", {}, "m"), -32601, "m"),
            (request("lsps5.list_webhooks", [1, 2], "p"), -32602, "p"),
            (request("lsps5.set_webhook", {"webhook": HOOK}, "a"), -32602, "a"),
            (request("lsps5.set_webhook", {"app_name": "x" * 65, "webhook": HOOK}, "l"), 500, "l"),
            (request("lsps5.set_webhook", {"app_name": "x", "webhook": "https://"}, "u"), 501, "u"),
            (
                request("lsps5.set_webhook", {"app_name": "x", "webhook": "http://a.example/"}),
                502,
                "r1",
            ),
            (
                request(
                    "lsps5.set_webhook",
                    {"app_name": "x", "webhook": "https://a.example/" + "a" * 1024},
                ),
                500,
                "r1",
            ),
        ]
        for payload, code, request_id in cases:
            answer = await ask(w.bob, payload)
            assert error_of(answer) == code, (payload[:80], answer)
            assert answer["id"] == request_id, (payload[:80], answer)
            assert answer["error"]["message"]

        for n in (1, 2):
            hook = {"app_name": f"app{n}", "webhook": HOOK}
            assert "result" in await ask(w.bob, request("lsps5.set_webhook", hook))
        third = await ask(
            w.bob, request("lsps5.set_webhook", {"app_name": "app3", "webhook": HOOK})
        )
        assert error_of(third) == 503
        assert third["error"]["data"] == {"max_webhooks": 2}
        assert len(await w.store.webhooks.list(w.bob.pubkey)) == 2

        # A stranger (no channel, no webhook, not on the allowlist) may not register.
        carol = w.node.add_peer("carol", connect=True)
        stranger = await ask(
            carol, request("lsps5.set_webhook", {"app_name": "a", "webhook": HOOK})
        )
        assert error_of(stranger) == 1003
        assert await w.store.webhooks.list(carol.pubkey) == ()
        # ...unless the operator allows it.
        await w.store.allowlist.add([carol.pubkey])
        allowed = await ask(carol, request("lsps5.set_webhook", {"app_name": "a", "webhook": HOOK}))
        assert allowed["result"]["num_webhooks"] == 1

        # What needs no answer gets none: a notification, and a response.
        await w.bob.lsps_request(b'{"jsonrpc":"2.0","method":"lsps5.list_webhooks"}')
        await w.bob.lsps_request(b'{"jsonrpc":"2.0","id":"x","result":{}}')
        await counted(w, "lsps_dropped:not_a_request", 2)
        # The daemon is still up, and still keeps mail.
        w.bob.disconnect()
        await w.alice.send_onion_message(w.message_for_bob(b"after the bad bytes"))
        await wait_until(lambda: _has_mail(w), what="bob's mail to be kept")


async def _has_mail(w: World) -> bool:
    return len(await w.stored_for(w.bob)) == 1


@GENERATIONS
async def test_redis_failing_answers_internal_error_and_writes_nothing(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with world(personality, redis_url, tmp_path, lsps5=True) as w:
        w.bob.connect()
        await w.start_daemon()
        # A key of the wrong type where bob's webhooks go: every script on it fails.
        key = Keys(w.node.pubkey).webhooks_key(w.bob.pubkey)
        await w.store.redis.set(key, "not a hash")
        answer = await ask(w.bob, request("lsps5.set_webhook", {"app_name": "a", "webhook": HOOK}))
        assert error_of(answer) == -32603
        assert await w.store.redis.get(key) == b"not a hash"
        assert await w.store.webhooks.last_seen(w.bob.pubkey) is None


@GENERATIONS
async def test_a_flood_from_one_peer_is_cut_at_its_rate_and_others_are_served(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    rate = 5
    async with world(
        personality, redis_url, tmp_path, lsps5=True, lsps_requests_per_minute=rate
    ) as w:
        w.bob.connect()
        await w.start_daemon()
        flood = 50
        for n in range(flood):
            hook = {"app_name": f"app{n % 3}", "webhook": f"{HOOK}&n={n}"}
            await w.bob.lsps_request(request("lsps5.set_webhook", hook, f"f{n}"))
        # alice is not held up: her request is answered while bob's flood is dropped.
        answer = await ask(w.alice, request("lsps0.list_protocols", {}, "alice"))
        assert answer["id"] == "alice"
        await counted(w, "lsps_dropped:rate_limited", flood - rate)
        async with asyncio.timeout(10):
            answers = await w.bob.wait_lsps(rate)
        # The bucket refills at rate/60 a second: a slow test may have earned one more.
        assert rate <= len(answers) <= rate + 1
        assert [json.loads(a)["id"] for a in answers[:rate]] == [f"f{n}" for n in range(rate)]


@GENERATIONS
async def test_without_message_write_lsps5_is_off_and_mail_still_works(
    personality: Personality,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lndmailbox")
    async with world(personality, redis_url, tmp_path, lsps5=True) as w:
        macaroon = tmp_path / "no-message-write.macaroon"
        macaroon.write_bytes(
            w.node.bake_macaroon(
                ["info:read", "peers:read", "offchain:read", "offchain:write", "signer:generate"]
            )
        )
        w.bob.connect()
        await w.start_daemon(macaroonpath=macaroon)
        off = [r for r in caplog.records if "LSPS5 is off" in r.getMessage()]
        assert len(off) == 1, [r.getMessage() for r in off]
        assert "message:write" in off[0].getMessage()
        await w.bob.lsps_request(request("lsps0.list_protocols", {}))
        w.bob.disconnect()
        await w.alice.send_onion_message(w.message_for_bob(b"mail without LSPS5"))
        await wait_until(lambda: _has_mail(w), what="bob's mail to be kept")
        assert w.bob.lsps_received() == []


@GENERATIONS
async def test_a_registered_phone_is_woken_when_its_mail_is_stored(
    personality: Personality, redis_url: str, tmp_path: Path, endpoint: MakeEndpoint
) -> None:
    ca = LocalCa.create(tmp_path / "ca")
    ep = await endpoint(tls=ca)
    url = ep.url_for("/wake/bob?token=bob-push-token")
    async with world(
        personality,
        redis_url,
        tmp_path,
        lsps5=True,
        lsps5_allow_private_webhooks=True,
        lsps5_ca_file=ca.cert_path,
    ) as w:
        w.bob.connect()
        await w.start_daemon()
        answer = await ask(w.bob, request("lsps5.set_webhook", {"app_name": "w", "webhook": url}))
        assert answer["result"]["num_webhooks"] == 1
        await ep.wait_for(1)
        w.bob.disconnect()
        await w.alice.send_onion_message(w.message_for_bob(b"wake up"))
        await ep.wait_for(2)
        assert [r.body for r in ep.requests] == [REGISTERED, INCOMING]
        for r in ep.requests:
            check_notification(r.headers, r.body, w.node.pubkey)
        # The phone wakes, and its mail is what was sent.
        w.bob.connect()
        async with asyncio.timeout(10):
            await w.bob.wait_received(1)
        assert await w.payloads_received(w.bob) == [b"wake up"]


async def test_clients_with_channels_are_kept_and_others_go_after_the_retention(
    redis_url: str, tmp_path: Path
) -> None:
    async with world(Personality.LND_0_21, redis_url, tmp_path, lsps5=True) as w:
        carol = w.node.add_peer("carol")  # no channel
        dave = w.node.add_peer("dave")  # no channel, seen lately
        now_ms = int(time.time() * 1000)
        long_ago = now_ms - 31 * 86_400_000
        for peer, seen in ((w.bob, long_ago), (carol, long_ago), (dave, now_ms - 86_400_000)):
            await w.store.webhooks.set(peer.pubkey, "w", HOOK, max_webhooks=10, now_ms=seen)
        await w.start_daemon()

        async def carol_gone() -> bool:
            return await w.store.webhooks.last_seen(carol.pubkey) is None

        await wait_until(carol_gone, what="the retention pass to remove carol")
        assert await w.store.webhooks.list(carol.pubkey) == ()
        bob_seen = await w.store.webhooks.last_seen(w.bob.pubkey)
        assert bob_seen is not None
        assert bob_seen >= now_ms  # marked seen: he has a channel
        assert await w.store.webhooks.last_seen(dave.pubkey) == now_ms - 86_400_000
