"""Credentials that stop working, and the messages that say so.

- A macaroon with a ``time-before`` caveat expires while the real daemon (a subprocess:
  the exit code matters) runs against simnet and a real Redis, and messages for an
  offline, allowed peer keep coming. No message is dropped as ``signer_unavailable`` and
  none is lost: the daemon stops with exit 1 and one line naming the macaroon's file and
  the expiry, every message it read stays journaled, and a daemon given a new macaroon
  in the same file decides them; the peer, once online, peels each to its payload.
- A macaroon without ``offchain:read`` ends the daemon with one line naming the
  permission, exit 1, no stack dump.
- A file that is not a macaroon is named, with what is expected, before lnd is asked
  (exit 2); real lnd macaroons and simnet's pass the check.
- lnd's answers to expired, revoked, foreign and narrow macaroons (simnet speaks lnd's
  texts) are typed :class:`~lndmailbox.errors.LndCredentialsError` /
  :class:`~lndmailbox.errors.LndPermissionError`, and a transient signer error is waited
  out, not a drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from simnet import Personality, SimNode, SimPeer
from simnet.macaroons import MacaroonService, time_before_caveat

from lndmailbox.errors import ConfigError, LndCredentialsError, LndPermissionError
from lndmailbox.lnd import PERMISSIONS, LndClient, resolve_endpoint
from lndmailbox.lnd.endpoint import macaroon_problem
from lndmailbox.onion import BlindedHopSpec, Receive, message_via
from lndmailbox.onion.tlv import scid
from lndmailbox.onion.wire import OnionMessage
from lndmailbox.store import Store
from tests.daemon_harness import PAYLOAD_TYPE, wait_until
from tests.daemon_process import daemon_argv

GENERATIONS = pytest.mark.parametrize(
    "personality", [Personality.LND_0_20, Personality.LND_0_21], ids=["lnd0.20", "lnd0.21"]
)
MAILBOX_PERMISSIONS = sorted({permission for _, permission in PERMISSIONS.values()})
# Long enough for a subprocess daemon to start on a loaded CI machine; short for CI.
EXPIRES_IN = 8.0
LOG_LEVEL = "error"
# An admin.macaroon written by a real lnd (a regtest node of a public Polar setup).
REAL_LND_MACAROON = bytes.fromhex(
    "0201036c6e6402f801030a109b6d802e18017d1bf4536d078c9329751201301a160a0761646472657373"
    "120472656164120577726974651a130a04696e666f120472656164120577726974651a170a08696e766f"
    "69636573120472656164120577726974651a210a086d616361726f6f6e120867656e6572617465120472"
    "656164120577726974651a160a076d657373616765120472656164120577726974651a170a086f666663"
    "6861696e120472656164120577726974651a160a076f6e636861696e120472656164120577726974651a"
    "140a057065657273120472656164120577726974651a180a067369676e6572120867656e657261746512"
    "04726561640000062058d201c77473d9855447c54ffcc1f33f9c07c3ce240767402fd38f0bf2ca4624"
)


@dataclass
class Lsp:
    node: SimNode
    alice: SimPeer
    bob: SimPeer
    cert: Path
    macaroon: Path
    stream: str

    def message_for_bob(self, text: bytes) -> OnionMessage:
        _, message = message_via(
            [BlindedHopSpec(self.node.pubkey, next_node_id=self.bob.pubkey), self.bob.pubkey],
            {PAYLOAD_TYPE: text},
        )
        return message

    async def subscribed(self) -> bool:
        return (
            self.node.subscriber_count(self.stream) >= 1
            and self.node.subscriber_count("peer_events") >= 1
        )


@contextlib.asynccontextmanager
async def lsp(personality: Personality, tmp_path: Path) -> AsyncIterator[Lsp]:
    node = SimNode(personality, onion_rate_limits=None)
    await node.start()
    alice = node.add_peer("alice")
    bob = node.add_peer("bob")
    node.open_channel(alice, scid(800_000, 1, 0))
    node.open_channel(bob, scid(800_000, 2, 0))
    alice.connect()
    cert, _ = node.write_credentials(tmp_path / "lnd")
    stream = "onion_messages" if personality is Personality.LND_0_21 else "custom_messages"
    try:
        yield Lsp(node, alice, bob, cert, tmp_path / "mailbox.macaroon", stream)
    finally:
        await node.stop()


def daemon_command(world: Lsp, redis_url: str) -> list[str]:
    return daemon_argv(
        world.node.target,
        world.cert,
        world.macaroon,
        redis_url,
        "--allow-channel-peers",
        "--sweep-interval",
        "1",
        "--log-level",
        LOG_LEVEL,
    )


async def start(world: Lsp, redis_url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *daemon_command(world, redis_url),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


async def ended(daemon: asyncio.subprocess.Process, within: float = 60) -> tuple[int, str]:
    """The exit code and everything the daemon wrote."""
    out, err = await asyncio.wait_for(daemon.communicate(), within)
    assert daemon.returncode is not None
    return daemon.returncode, (out + err).decode()


async def refused(probe: LndClient) -> bool:
    """Whether simnet now refuses the probe's macaroon (the event the test waits on)."""
    try:
        await probe.get_info()
    except LndCredentialsError:
        return True
    return False


async def peeled_payloads(peer: SimPeer) -> list[bytes]:
    texts = []
    for message in peer.received:
        result = await peer.peel(message)
        assert isinstance(result, Receive), result
        texts.append(result.payload[PAYLOAD_TYPE])
    return texts


# --- the expired macaroon -----------------------------------------------------------------


@GENERATIONS
@pytest.mark.parametrize("how", ["expires", "is revoked"])
async def test_a_macaroon_that_stops_working_stops_the_daemon_and_keeps_every_message(
    personality: Personality, how: str, redis_url: str, tmp_path: Path
) -> None:
    """``expires``: a ``time-before`` caveat EXPIRES_IN seconds ahead. ``is revoked``: lnd's
    root key 0 deleted (``lncli revokemacaroonkey 0``; new macaroons use root key 1)."""
    async with lsp(personality, tmp_path) as world:
        deadline = datetime.now(UTC) + timedelta(seconds=EXPIRES_IN)
        caveats = [time_before_caveat(deadline)] if how == "expires" else []
        macaroon = world.node.bake_macaroon(MAILBOX_PERMISSIONS, caveats=caveats)
        world.macaroon.write_bytes(macaroon)
        store = Store.from_url(redis_url, world.node.pubkey)
        sent: list[bytes] = []

        async def send(text: bytes) -> None:
            fate = await world.alice.send_onion_message(world.message_for_bob(text))
            assert fate.published, fate
            sent.append(text)

        daemon = await start(world, redis_url)
        try:
            await wait_until(world.subscribed, within=EXPIRES_IN, what="the daemon to start")
            for i in range(3):
                await send(f"before {i}".encode())

            async def stored(count: int) -> bool:
                return len(await store.queues.messages(world.bob.pubkey)) == count

            await wait_until(lambda: stored(3), what="3 messages stored before the expiry")
            if how == "is revoked":
                world.node.macaroons.root_key_id = b"1"
            async with LndClient(world.node.endpoint_with(macaroon), retry_for=0) as probe:
                await wait_until(
                    lambda: refused(probe), within=EXPIRES_IN + 5, what="lnd to refuse it"
                )
            # Messages keep coming, together: the first peel after the expiry stops the
            # daemon, and every one it read must stay journaled.
            burst = time.monotonic()
            await asyncio.gather(*(send(f"after {i}".encode()) for i in range(10)))
            code, output = await ended(daemon)
            print(f"the daemon exited {time.monotonic() - burst:.2f}s after the burst")
        finally:
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()
        print(output)
        assert code == 1
        assert "Traceback" not in output
        [line] = output.strip().splitlines()
        assert str(world.macaroon) in line
        assert ("has expired" if how == "expires" else "root key is gone") in line
        assert "DeriveSharedKey" in line

        pending = await store.journal.pending()
        counters = await store.events.counters()
        print(f"journaled after the stop: {len(pending)}; counters: {counters}")
        assert counters.get("lost", 0) == 0
        assert not any("signer" in name for name in counters), counters
        assert counters.get("dropped", 0) == 0
        assert len(await store.queues.messages(world.bob.pubkey)) == 3
        read = len(pending)
        assert read >= 1, "the daemon read none of the messages after the expiry"

        # The operator puts a new macaroon in the same file; the next daemon decides
        # what the last one left journaled.
        world.macaroon.write_bytes(world.node.bake_macaroon(MAILBOX_PERMISSIONS))
        daemon = await start(world, redis_url)
        try:
            await wait_until(lambda: stored(3 + read), what="the journaled messages stored")
            world.bob.connect()
            await wait_until(lambda: stored(0), what="the mailbox to empty")
            await wait_until(
                lambda: len(world.bob.received) == 3 + read, what="bob to receive them all"
            )
            assert await store.journal.pending() == []
        finally:
            daemon.terminate()
            code, output = await ended(daemon)
        assert code == 0, output
        counters = await store.events.counters()
        await store.aclose()
    payloads = await peeled_payloads(world.bob)
    print(f"sent {len(sent)}, read by the first daemon after the expiry: {read}")
    assert len(payloads) == len(set(payloads)) == 3 + read
    assert set(payloads) <= set(sent)
    assert counters.get("lost", 0) == 0
    assert counters.get("delivered", 0) == 3 + read
    # Everything lnd handed the first daemon reached bob: nothing sits between lnd's stream
    # and the journal when the daemon stops for its credentials.
    assert read == 10, f"{10 - read} messages were handed to the stopping daemon and lost"


# --- clear messages -------------------------------------------------------------------------


@GENERATIONS
async def test_a_macaroon_without_offchain_read_ends_with_one_line(
    personality: Personality, redis_url: str, tmp_path: Path
) -> None:
    async with lsp(personality, tmp_path) as world:
        narrow = [p for p in MAILBOX_PERMISSIONS if p != "offchain:read"]
        world.macaroon.write_bytes(world.node.bake_macaroon(narrow))
        code, output = await ended(await start(world, redis_url))
    print(output)
    assert code == 1
    assert "Traceback" not in output
    assert "did not stop" not in output
    [line] = output.strip().splitlines()
    assert "needs offchain:read" in line
    assert str(world.macaroon) in line


async def test_a_file_that_is_not_a_macaroon_is_named(redis_url: str, tmp_path: Path) -> None:
    async with lsp(Personality.LND_0_21, tmp_path) as world:
        world.macaroon.write_bytes(world.cert.read_bytes())  # the certificate, by mistake
        code, output = await ended(await start(world, redis_url))
    print(output)
    assert code == 2
    assert "Traceback" not in output
    [line] = output.strip().splitlines()
    assert f"{world.macaroon} is not a macaroon" in line
    assert "admin.macaroon" in line  # what is expected


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"-----BEGIN CERTIFICATE-----\n", "not 0x02"),
        (REAL_LND_MACAROON.hex().encode() + b"\n", "hex text"),
        (REAL_LND_MACAROON[:-4], "past the end"),
        (REAL_LND_MACAROON[:40], "past the end"),
        (bytes([2, 0, 0]), "no identifier"),
    ],
)
def test_what_is_not_a_macaroon_and_why(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "x.macaroon"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=f"{path} is not a macaroon.*{why}"):
        resolve_endpoint(tlscert=_cert(), macaroonpath=path)


def test_real_macaroons_pass_the_check(tmp_path: Path) -> None:
    service = MacaroonService()
    soon = time_before_caveat(datetime.now(UTC) + timedelta(hours=1))
    for macaroon in (
        REAL_LND_MACAROON,
        service.bake_admin(),
        service.bake(["uri:/lnrpc.Lightning/GetInfo"], caveats=[soon, "ipaddr 127.0.0.1"]),
    ):
        assert macaroon_problem(macaroon) is None
        path = tmp_path / "ok.macaroon"
        path.write_bytes(macaroon)
        endpoint = resolve_endpoint(tlscert=_cert(), macaroonpath=path)
        assert endpoint.macaroon == macaroon
        assert endpoint.macaroon_source == f"the macaroon {path}"


def _cert() -> str:
    from simnet.tls import generate_tls_pair

    return generate_tls_pair().cert_pem.decode()


# --- lnd's answers, typed ------------------------------------------------------------------


async def test_lnd_refusing_a_macaroon_is_typed_and_says_what_failed(node21: SimNode) -> None:
    past = time_before_caveat(datetime.now(UTC) - timedelta(seconds=1))
    revoked = MacaroonService(node21.macaroons.root_key, root_key_id=b"1").bake_admin()
    cases = {
        "has expired": node21.bake_macaroon(MAILBOX_PERMISSIONS, caveats=[past]),
        "revoked": revoked,
        "signature does not verify": SimNode(node21.personality).admin_macaroon,
    }
    for why, macaroon in cases.items():
        endpoint = node21.endpoint_with(macaroon)
        async with LndClient(endpoint, retry_for=5) as lnd:
            with pytest.raises(LndCredentialsError, match=why) as raised:
                await lnd.derive_shared_key(bytes.fromhex(_GENERATOR))
        assert not isinstance(raised.value, LndPermissionError)
        assert raised.value.rpc == "DeriveSharedKey"
    narrow = node21.bake_macaroon(["info:read"])
    async with LndClient(node21.endpoint_with(narrow), retry_for=5) as lnd:
        with pytest.raises(LndPermissionError, match="DeriveSharedKey needs signer:generate"):
            await lnd.derive_shared_key(bytes.fromhex(_GENERATOR))


_GENERATOR = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"


# --- a signer that is only away ----------------------------------------------------------


async def test_a_signer_away_is_waited_out_and_a_stop_leaves_the_message_journaled(
    node21: SimNode, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """lnd answering "wallet locked" (as while it restarts) to DeriveSharedKey: the
    decider tries again past the client's own retries, until lnd answers (the message is
    kept) or the daemon stops (the message stays journaled); never a drop."""
    from lndmailbox.clock import SystemClock
    from lndmailbox.daemon.decision_queue import Arrival, DecisionQueue
    from lndmailbox.daemon.metrics import Metrics
    from lndmailbox.daemon.peers import PeerTracker
    from lndmailbox.daemon.race_guard import RaceGuard
    from lndmailbox.lnd import IncomingOnionMessage, Transport
    from lndmailbox.onion import CachedNodeKey, LocalNodeKey
    from tests.decider_parts import Decided, Kept, NothingSent, decider_for

    bob = LocalNodeKey.generate()
    clock, metrics = SystemClock(), Metrics()
    decided, kept = Decided(), Kept()
    queue = DecisionQueue()
    # The client gives up after 0.3 s, so the decider's own retry is what waits.
    async with (
        LndClient(node21.endpoint, retry_for=0.3) as lnd,
        Store.from_url(redis_url, node21.pubkey) as store,
    ):
        await store.allowlist.add([bob.pubkey])
        decider = decider_for(
            store,
            node_id=node21.pubkey,
            node_key=CachedNodeKey(lnd.node_key()),
            transport=Transport.CUSTOM,
            clock=clock,
            peers=PeerTracker(clock),
            race=RaceGuard(clock, 0),
            sender=NothingSent(),
            kept=kept,
            decided=decided,
            metrics=metrics,
            allow_channel_peers=False,
            queue=queue,
        )

        def arrival(entry: str) -> Arrival:
            _, message = message_via(
                [BlindedHopSpec(node21.pubkey, next_node_id=bob.pubkey), bob.pubkey],
                {PAYLOAD_TYPE: entry.encode()},
            )
            incoming = IncomingOnionMessage(
                peer=LocalNodeKey.generate().pubkey,
                path_key=message.path_key,
                onion=message.onion,
            )
            return Arrival(incoming, entry)

        def signer_failing(times: int = 1) -> bool:
            """The decider's retry saw the client give up ``times`` times."""
            said = [r.getMessage() for r in caplog.records]
            return sum("signer failing" in m or "signer still failing" in m for m in said) >= times

        caplog.set_level(logging.DEBUG, logger="lndmailbox.daemon.decider")

        stop = asyncio.Event()
        running = asyncio.create_task(decider.run(stop))
        node21.wallet_locked = True
        queue.put_nowait(arrival("entry-1"))
        await wait_until(lambda: signer_failing(2), what="the decider to retry the signer")
        assert (decided.entries, kept.messages) == ([], [])
        node21.wallet_locked = False
        await wait_until(lambda: len(kept.messages) == 1, what="the message kept")

        caplog.clear()
        node21.wallet_locked = True
        queue.put_nowait(arrival("entry-2"))
        await wait_until(signer_failing, what="the decider to retry the signer again")
        stop.set()
        await asyncio.wait_for(running, 10)
        node21.wallet_locked = False
    assert decided.entries == []  # entry-1 belongs to the keeper; entry-2 stays journaled
    assert len(kept.messages) == 1
    drops = metrics.registry.get_sample_value(
        "lndmailbox_dropped_total", {"reason": "signer_unavailable"}
    )
    assert drops in (None, 0)


async def test_a_task_that_loses_a_cancellation_is_cancelled_again() -> None:
    """What left the peer follower hanging (and the stack dump) after a refused start: a
    cancellation lost inside a library (Python 3.11's asyncio.wait_for) must not keep a
    service's loop running."""
    from lndmailbox.daemon.supervisor import run_until_stopped

    swallowed = asyncio.Event()

    async def loses_one_cancellation() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # as wait_for does when the awaited call completed meanwhile
        await asyncio.Event().wait()  # runs on, as the peer follower read lnd's stream

    stop = asyncio.Event()
    running = asyncio.create_task(run_until_stopped(stop, loses_one_cancellation()))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert swallowed.is_set()
