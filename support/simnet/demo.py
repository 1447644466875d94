"""``make demo``: the mailbox's main job, on built-in defaults, with no lnd at hand.

It starts simnet (a stand-in lnd speaking lnd's gRPC over TLS with macaroons; lnd 0.21
by default, ``--lnd 0.20`` for the custom-message generation), then the real daemon
with no ``--redis-url`` (so it runs its embedded Redis-protocol server), and tells a
story as it happens: alice sends bob an onion message through the LSP while bob's phone
is offline; the mailbox stores it; bob comes online; bob peels what he receives with his
own key and prints alice's payload; the counters close the story.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lndmailbox.config import Settings
from lndmailbox.daemon import run
from lndmailbox.logs import configure_logging
from lndmailbox.onion import BlindedHopSpec, Receive, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.store import Store, redis_url_for
from simnet import Personality, SimNode

PAYLOAD_TYPE = 65


def say(text: str) -> None:
    print(f"demo | {text}", flush=True)


async def _until(what: str, check: object, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check() if callable(check) else check
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"demo: timed out waiting for {what}")


async def story(personality: Personality, workdir: Path) -> None:
    node = SimNode(personality, alias="lsp")
    await node.start()
    say(f"simnet: an lnd {personality.release} stand-in at {node.target}, node {node.pubkey.hex()}")
    alice = node.add_peer("alice")
    bob = node.add_peer("bob")
    node.open_channel(alice, scid(800_000, 1, 0))
    node.open_channel(bob, scid(800_000, 2, 0))
    alice.connect()
    say(f"alice {alice.pubkey.hex()[:16]}... is online; bob {bob.pubkey.hex()[:16]}... is not")

    cert, macaroon = node.write_credentials(workdir / "lnd")
    settings = Settings(
        rpcserver=node.target,
        tlscertpath=cert,
        macaroonpath=macaroon,
        network="regtest",
        datadir=workdir / "mailbox",
        allow_channel_peers=True,
        log_level="info",
    )
    say("starting lndmailbox (embedded Redis, --allow-channel-peers)")
    stop = asyncio.Event()
    daemon = asyncio.create_task(run(settings, stop=stop))
    try:
        stream = "onion_messages" if personality.native_onion_messages else "custom_messages"
        await _until("the daemon", lambda: node.subscriber_count(stream) > 0)
        store = Store.from_url(redis_url_for(settings), node.pubkey)
        try:
            await _tell(node, alice, bob, store)
        finally:
            await store.aclose()
    finally:
        stop.set()
        await daemon
        await node.stop()


async def _tell(node: SimNode, alice: object, bob: object, store: Store) -> None:
    from simnet import SimPeer

    assert isinstance(alice, SimPeer)
    assert isinstance(bob, SimPeer)
    text = b"held_htlc_available (demo): bob, please release the HTLC"
    first, message = message_via(
        [BlindedHopSpec(node.pubkey, next_node_id=bob.pubkey), bob.pubkey],
        {PAYLOAD_TYPE: text},
    )
    assert first == node.pubkey
    say(f"alice sends a {len(message.onion)}-byte onion message to bob through the LSP")
    await alice.send_onion_message(message)

    async def stored() -> bool:
        return bool(await store.queues.messages(bob.pubkey))

    await _until("the message to be stored", stored)
    queued = await store.queues.messages(bob.pubkey)
    say(
        f"stored in Redis for bob: {len(queued)} message, id {queued[0].id}, "
        f"expires in {queued[0].expires_at - time.time():.0f}s"
    )

    say("bob's phone comes online")
    bob.connect()
    await _until("delivery to bob", lambda: bool(bob.received))
    result = await bob.peel(bob.received[0])
    assert isinstance(result, Receive)
    say(f"bob peels it with his own key and reads: {result.payload[PAYLOAD_TYPE].decode()!r}")

    async def emptied() -> bool:
        return not await store.queues.messages(bob.pubkey)

    await _until("the mailbox to empty", emptied)
    await _until("the counters", _counted(store))
    counters = await store.events.counters()
    say("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))


def _counted(store: Store) -> object:
    async def check() -> bool:
        return (await store.events.counters()).get("delivered", 0) >= 1

    return check


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simnet.demo", description=__doc__)
    parser.add_argument(
        "--lnd", choices=["0.20", "0.21"], default="0.21", help="which lnd generation to play"
    )
    parser.add_argument("--verbose", action="store_true", help="show the daemon's debug lines")
    args = parser.parse_args(argv)
    configure_logging("debug" if args.verbose else "info", "text")
    personality = Personality.LND_0_21 if args.lnd == "0.21" else Personality.LND_0_20
    with tempfile.TemporaryDirectory(prefix="lndmailbox-demo-") as tmp:
        try:
            asyncio.run(story(personality, Path(tmp)))
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
    say("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
