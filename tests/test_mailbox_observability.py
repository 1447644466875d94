"""What the running daemon tells: Prometheus metrics, the event stream and the webhook."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from simnet import Personality

from lndmailbox.daemon.webhook import SIGNATURE_HEADER, verify_signature
from lndmailbox.onion import BlindedHopSpec, message_via
from lndmailbox.store import free_port
from tests.daemon_harness import PAYLOAD_TYPE, World, counter, wait_until, world
from tests.http_endpoint import MakeEndpoint

SECRET = "webhook secret"


def scrape(port: int) -> dict[str, float]:
    """Every sample of the endpoint, keyed ``name{label=value,...}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def store_deliver_and_refuse(w: World) -> None:
    """One message stored then delivered to bob; one refused for carol (no mailbox)."""
    carol = w.node.add_peer("carol")  # no channel, not on the allowlist
    await w.alice.send_onion_message(w.message_for_bob(b"for bob"))
    _, for_carol = message_via(
        [BlindedHopSpec(w.node.pubkey, next_node_id=carol.pubkey), carol.pubkey],
        {PAYLOAD_TYPE: b"for carol"},
    )
    await w.alice.send_onion_message(for_carol)

    async def settled() -> bool:
        return await counter(w, "stored") == 1 and await counter(w, "dropped:not_allowed") == 1

    await wait_until(settled, what="one stored, one refused")
    w.bob.connect()
    await wait_until(lambda: len(w.bob.received) == 1, what="delivery to bob")


async def test_metrics_endpoint_counts_a_scenario(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    async with world(
        Personality.LND_0_20, redis_url, tmp_path, metrics_addr=f"127.0.0.1:{port}"
    ) as w:
        await w.start_daemon()
        await store_deliver_and_refuse(w)

        async def delivered_counted() -> bool:
            samples = await asyncio.to_thread(scrape, port)
            return samples.get("lndmailbox_delivered_total{}") == 1

        await wait_until(delivered_counted, what="the delivery in the metrics")
        samples = await asyncio.to_thread(scrape, port)
        assert samples["lndmailbox_received_total{}"] == 2
        assert samples["lndmailbox_stored_total{}"] == 1
        assert samples["lndmailbox_dropped_total{reason=not_allowed}"] == 1
        assert samples["lndmailbox_lost_total{reason=buffer_full}"] == 0
        assert samples["lndmailbox_online_peers{}"] == 2  # alice and bob
        assert samples["lndmailbox_peel_seconds_count{}"] == 2
        assert samples["lndmailbox_store_seconds_count{}"] == 1
        assert samples["lndmailbox_delivery_delay_seconds_count{}"] == 1
        # Two per peel, and one at start to check the macaroon may use the signer.
        assert samples["lndmailbox_lnd_rpc_seconds_count{rpc=DeriveSharedKey}"] == 2 * 2 + 1
        assert samples["lndmailbox_lnd_rpc_seconds_count{rpc=SendCustomMessage}"] == 1


async def test_event_stream_tells_stored_delivered_and_dropped(
    redis_url: str, tmp_path: Path
) -> None:
    async with world(Personality.LND_0_21, redis_url, tmp_path) as w:
        await w.start_daemon()
        await store_deliver_and_refuse(w)

        async def two_events() -> bool:
            return len(await w.store.events.read()) >= 2

        await wait_until(two_events, what="two events")
        await w.stop_daemon()  # ends the summary interval: the drop is in its summary
        events = await w.store.events.read()
        kinds = sorted((e.kind, e.of, e.reason, e.count) for e in events)
        assert kinds == [
            ("delivered", "", "", 0),
            ("stored", "", "", 0),
            ("summary", "dropped", "not_allowed", 1),
        ]
        (summary,) = [e for e in events if e.kind == "summary"]
        assert summary.top == ((w.alice.pubkey, 1),), "the sender that caused it"
        stored = next(e for e in events if e.kind == "stored")
        delivered = next(e for e in events if e.kind == "delivered")
        assert stored.message_id == delivered.message_id
        assert stored.peer == w.bob.pubkey
        assert stored.size == 33 + 1366


async def test_webhook_posts_signed_stored_and_delivered(
    redis_url: str, tmp_path: Path, endpoint: MakeEndpoint
) -> None:
    hook = await endpoint()
    async with world(
        Personality.LND_0_21,
        redis_url,
        tmp_path,
        notify_url=hook.url,
        notify_secret=SECRET,
    ) as w:
        await w.start_daemon()
        await store_deliver_and_refuse(w)
        await hook.wait_for(2)
    bodies = []
    for request in hook.requests:
        assert request.method == "POST"
        assert verify_signature(
            SECRET.encode(), request.body, request.headers[SIGNATURE_HEADER.lower()]
        )
        bodies.append(json.loads(request.body))
    # Posts go out on several connections, so they may land in either order.
    by_event = {b["event"]: b for b in bodies}
    assert by_event.keys() == {"stored", "delivered"}
    assert {b["peer"] for b in bodies} == {w.bob.pubkey.hex()}
    assert by_event["stored"]["message_id"] == by_event["delivered"]["message_id"]
    assert by_event["stored"]["node"] == w.node.pubkey.hex()


async def test_a_hanging_webhook_holds_up_nothing(
    redis_url: str, tmp_path: Path, endpoint: MakeEndpoint
) -> None:
    hook = await endpoint(hang=True)
    port = free_port()
    async with world(
        Personality.LND_0_20,
        redis_url,
        tmp_path,
        notify_url=hook.url,
        notify_secret=SECRET,
        notify_timeout=0.3,
        notify_give_up=0.5,
        metrics_addr=f"127.0.0.1:{port}",
    ) as w:
        await w.start_daemon()
        # Stored and delivered while the endpoint answers nothing.
        await store_deliver_and_refuse(w)
        await hook.wait_for(1)
        assert await w.payloads_received(w.bob) == [b"for bob"]

        async def failures_counted() -> bool:
            samples = await asyncio.to_thread(scrape, port)
            return samples.get("lndmailbox_notify_failed_total{}", 0) >= 2

        await wait_until(failures_counted, what="both notifications counted as failed")
