"""Async payments between real LDK wallets, through real lnd and the mailbox.

    payer (LDK) ── zero-conf private channel ── LSP (lnd + mailbox) ── zero-conf private channel ── phone (LDK)

Both wallets are rust-lightning nodes (itest/ldk/, driven through itest/ldknode.py). The LSP
opened their channels the way LSPs open channels to phones: private, zero-conf, with an SCID
alias. The phone builds its static invoice's ``held_htlc_available`` path the way LDK does,
hands it to the payer and goes to sleep. The payer sends ``held_htlc_available`` (onion
message type 72) over it with LDK's own API and a reply path to itself. The mailbox keeps
the message; the phone wakes up, its OnionMessenger peels the message with the phone's own
key and hands it to LDK's async-payments handler, which answers ``release_held_htlc``
(type 74) over the payer's reply path, through the LSP while both are online.

Both blinded paths are LDK's compact ones: the phone's path has the LSP name the phone by
the alias of the phone's channel, the payer's reply path has it name the payer by the alias
of the payer's channel. lnd 0.21 resolves a zero-conf channel's alias (its graph holds the
channel under it, see itest/test_alias_facts.py), so release_held_htlc gets back to the
payer on both generations.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from itest.build import Binaries, Generation
from itest.channels import ChannelKind, LspView, open_private_channel, wait_in_graph
from itest.daemon import MailboxDaemon, mailboxctl_entry_point
from itest.ldknode import LdkNode
from itest.network import Network
from itest.onion import inbox_stream, peel_with
from itest.process import wait_for
from itest.rpc import Collector, collect
from lndmailbox import onion
from lndmailbox.onion.tlv import format_scid
from lndmailbox.onion.wire import ONION_MESSAGE_TYPE, OnionMessage
from lndmailbox.store import RedisServer, Store, StoredMessage

pytestmark = pytest.mark.timeout(900)

StartMailbox = Callable[..., MailboxDaemon]  # conftest's mailbox(*flags)
PATH_EXPIRY_SECS = 3600
# How long a wallet that should not hear anything is listened to.
SILENCE_SECS = 5.0


@dataclass(frozen=True)
class Wallets:
    phone: LdkNode
    payer: LdkNode
    phone_channel: LspView
    """The LSP's view of its channel to the phone."""
    payer_channel: LspView
    """The LSP's view of its channel to the payer."""


@pytest.fixture(scope="module")
def wallets(
    network: Network, binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Wallets]:
    """A phone and a payer, each with a zero-conf channel from the LSP, both online."""
    workdir = tmp_path_factory.mktemp(f"ldk-{network.generation.value}")
    tip = f"{network.btcd.call('getbestblockhash')}:{network.btcd.height()}"
    phone = LdkNode("phone", binaries.ldk, workdir / "phone", network.log_dir)
    payer = LdkNode("payer", binaries.ldk, workdir / "payer", network.log_dir)
    views: dict[str, LspView] = {}
    try:
        for wallet in (phone, payer):
            wallet.start(tip)
            wallet.connect(network.lsp)
            txid = open_private_channel(network, wallet, ChannelKind.ZERO_CONF)
            wait_usable(network, wallet)
            views[wallet.name] = wait_in_graph(network, wallet, txid)
        yield Wallets(phone, payer, views["phone"], views["payer"])
    finally:
        for wallet in (phone, payer):
            wallet.stop()


# Helpers ---------------------------------------------------------------------------------------


def mailboxctl(daemon: MailboxDaemon, *args: str) -> Any:
    """``mailboxctl --json ARGS`` against the daemon's Redis and node, parsed."""
    node = daemon.network.lsp.pubkey_hex
    result = subprocess.run(
        [
            *mailboxctl_entry_point(),
            "--redis-url",
            daemon.redis_url,
            "--node",
            node,
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"mailboxctl {' '.join(args)}: {result.stderr}"
    return json.loads(result.stdout)


def wait_lsp_sees(network: Network, wallet: LdkNode, *, online: bool) -> None:
    wait_for(
        f"the LSP to see the {wallet.name} {'online' if online else 'offline'}",
        lambda: (wallet.node_id in network.lsp.peers()) is online,
        timeout=30,
    )


def wait_usable(network: Network, wallet: LdkNode) -> None:
    """LDK has a usable channel with the LSP. After a reconnect that takes channel_reestablish;
    until then LDK's peers for blinded paths carry no SCID and a path names the wallet by
    node id."""

    def usable() -> bool:
        return any(
            c["is_usable"] and c["counterparty"] == network.lsp.pubkey_hex
            for c in wallet.channels()
        )

    wait_for(f"the {wallet.name}'s channel to be usable on its side", usable, timeout=30)


def go_to_sleep(network: Network, wallet: LdkNode) -> None:
    wallet.disconnect(network.lsp)
    wait_lsp_sees(network, wallet, online=False)


def wake_up(network: Network, wallet: LdkNode) -> None:
    wallet.connect(network.lsp)
    wait_lsp_sees(network, wallet, online=True)
    wait_usable(network, wallet)


def ensure_online(network: Network, wallet: LdkNode) -> None:
    if network.lsp.pubkey_hex not in wallet.peers():
        wake_up(network, wallet)
    else:
        wait_usable(network, wallet)


def phone_path(network: Network, wallets: Wallets) -> dict[str, Any]:
    """The phone's held_htlc_available path, built as LDK builds a static invoice's: the LSP
    is the introduction node and names the phone by the alias lnd gave their channel."""
    ensure_online(network, wallets.phone)
    (path, *_) = wallets.phone.held_htlc_paths(PATH_EXPIRY_SECS)
    assert path["introduction_node"] == {"node_id": network.lsp.pubkey_hex}
    assert path["lsp_next_hop"] == {"scid": wallets.phone_channel.scid}
    assert wallets.phone_channel.scid in wallets.phone_channel.alias_scids
    return path


def payer_sends(wallets: Wallets, path: dict[str, Any]) -> str:
    """The payer sends held_htlc_available over the phone's ``path`` as LDK's ChannelManager
    does, to its connected LSP, with one compact reply path that has the LSP name the payer
    by the alias of the payer's channel; returns the payment id."""
    sent = wallets.payer.send_held_htlc_available(path["hex"])
    assert sent.sent == ["buffered"], sent
    (reply_path,) = sent.reply_paths
    assert reply_path["lsp_next_hop"] == {"scid": wallets.payer_channel.scid}, sent
    assert wallets.payer_channel.scid in wallets.payer_channel.alias_scids
    return sent.payment_id


def from_wallet(network: Network, wallet: LdkNode) -> Callable[[Any], bool]:
    """A predicate over the LSP's stream items: an onion message from ``wallet``."""

    def match(item: Any) -> bool:
        if network.generation is Generation.CUSTOM and item.type != ONION_MESSAGE_TYPE:
            return False
        return bool(item.peer == wallet.pubkey)

    return match


async def lsp_forwards(
    network: Network, at_lsp: Collector[Any], sender: LdkNode, next_hop: LspView
) -> None:
    """The LSP received an onion message from ``sender`` (seen on the LSP's own stream), and
    peeled with the LSP's key its hop names the next hop by ``next_hop``'s alias: what LDK's
    compact blinded path put there, observed rather than inferred."""
    item = await at_lsp.wait_for(
        f"an onion message from the {sender.name} at the LSP", from_wallet(network, sender)
    )
    if network.generation is Generation.CUSTOM:
        message = OnionMessage.decode(item.data)
    else:
        message = OnionMessage(path_key=item.path_key, onion=item.onion)
    forward = await peel_with(network.lsp, message)
    assert isinstance(forward, onion.Forward), forward
    assert forward.next_node_id is None, forward
    assert forward.short_channel_id == next_hop.scid, forward


async def stored_for(store: Store, wallet: LdkNode, daemon: MailboxDaemon) -> StoredMessage:
    deadline = time.monotonic() + 30
    while True:
        daemon.check_alive()
        messages = await store.queues.messages(wallet.pubkey)
        if messages:
            (stored,) = messages
            return stored
        if time.monotonic() > deadline:
            raise AssertionError(
                f"nothing stored for the {wallet.name} after 30s; mailbox log:\n"
                f"{daemon.process.log_tail(30)}"
            )
        await asyncio.sleep(0.2)


async def queue_empties(store: Store, wallet: LdkNode, daemon: MailboxDaemon) -> None:
    deadline = time.monotonic() + 30
    while await store.queues.messages(wallet.pubkey):
        daemon.check_alive()
        assert time.monotonic() < deadline, f"the {wallet.name}'s queue did not empty"
        await asyncio.sleep(0.2)


def released(wallets: Wallets, payment_id: str, *, since: int, timeout: float = 30) -> None:
    """The phone got held_htlc_available through LDK's handler, which answered, and the
    payer's handler got release_held_htlc for its payment."""
    # The phone's event is only "one since ``since``"; what ties it to this message is the
    # payer's filter below: release_held_htlc for exactly this payment id.
    held = wallets.phone.wait_event("held_htlc_available", since=since, timeout=timeout)
    assert held["context"]["kind"] == "inbound_payment", held
    assert held["has_reply_path"], held
    assert held["answered"], held
    release = wallets.payer.wait_event(
        "release_held_htlc",
        lambda e: e["context"].get("payment_id") == payment_id,
        timeout=timeout,
    )
    assert release["context"]["kind"] == "outbound_payment", release


# Scenarios -------------------------------------------------------------------------------------


async def test_held_htlc_available_waits_in_the_mailbox_for_a_sleeping_ldk_phone(
    network: Network, wallets: Wallets, redis_server: RedisServer, mailbox: StartMailbox
) -> None:
    path = await asyncio.to_thread(phone_path, network, wallets)
    await asyncio.to_thread(ensure_online, network, wallets.payer)
    await asyncio.to_thread(go_to_sleep, network, wallets.phone)
    daemon: MailboxDaemon = await asyncio.to_thread(mailbox)
    store = Store.from_url(redis_server.url, network.lsp.pubkey)
    try:
        async with (
            network.lsp.rpc() as lsp_rpc,
            collect(inbox_stream(network, lsp_rpc)) as at_lsp,
        ):
            payment_id = await asyncio.to_thread(payer_sends, wallets, path)
            await lsp_forwards(network, at_lsp, wallets.payer, wallets.phone_channel)
            stored = await stored_for(store, wallets.phone, daemon)
            assert stored.sender == wallets.payer.pubkey

            shown = await asyncio.to_thread(mailboxctl, daemon, "show", wallets.phone.node_id)
            assert [(m["id"], m["sender"]) for m in shown["messages"]] == [
                (stored.id, wallets.payer.node_id)
            ]

            since = wallets.phone.mark()
            await asyncio.to_thread(wake_up, network, wallets.phone)
            await asyncio.to_thread(released, wallets, payment_id, since=since)
            # The phone answered over the payer's reply path: the LSP named the payer by
            # the alias of the payer's channel.
            await lsp_forwards(network, at_lsp, wallets.phone, wallets.payer_channel)
            await queue_empties(store, wallets.phone, daemon)
            assert (await store.events.counters()).get("delivered", 0) >= 1
    finally:
        await store.aclose()


async def test_without_the_mailbox_a_sleeping_ldk_phone_never_hears(
    network: Network, wallets: Wallets
) -> None:
    """The control: the same message with no mailbox running is lost, on both generations,
    so the scenario above passes only because of the mailbox."""
    path = await asyncio.to_thread(phone_path, network, wallets)
    await asyncio.to_thread(ensure_online, network, wallets.payer)
    await asyncio.to_thread(go_to_sleep, network, wallets.phone)
    async with (
        network.lsp.rpc() as lsp_rpc,
        collect(inbox_stream(network, lsp_rpc)) as at_lsp,
    ):
        await asyncio.to_thread(payer_sends, wallets, path)
        # The message reached the LSP, which has nowhere to put it.
        await lsp_forwards(network, at_lsp, wallets.payer, wallets.phone_channel)
    since = wallets.phone.mark()
    await asyncio.to_thread(wake_up, network, wallets.phone)
    await asyncio.sleep(SILENCE_SECS)
    assert wallets.phone.events("held_htlc_available", since=since) == []


async def test_a_phone_that_reconnects_at_once_still_gets_its_message(
    network: Network,
    wallets: Wallets,
    redis_server: RedisServer,
    mailbox: StartMailbox,
) -> None:
    """The phone comes back within milliseconds of the send, while lnd and the mailbox are
    still handling the message. On lnd 0.21 the mailbox does not leave it to lnd, which may
    have tried while the phone was away: the phone came online within ``--race-window``, so
    the message is kept and sent (tests/test_race.py forces the same order on simnet)."""
    path = await asyncio.to_thread(phone_path, network, wallets)
    await asyncio.to_thread(ensure_online, network, wallets.payer)
    await asyncio.to_thread(go_to_sleep, network, wallets.phone)
    await asyncio.to_thread(mailbox)
    since = wallets.phone.mark()
    payment_id = await asyncio.to_thread(payer_sends, wallets, path)
    await asyncio.to_thread(wake_up, network, wallets.phone)
    await asyncio.to_thread(released, wallets, payment_id, since=since)


async def test_mailboxctl_names_the_channels_whose_aliases_lnd_drops(
    network: Network, wallets: Wallets, mailbox: StartMailbox
) -> None:
    """The warning's rule against real lnd: on 0.21 the lnd peers' channels, which confirmed
    before use, have aliases lnd cannot resolve; the wallets' zero-conf channels do not. On
    0.20 the mailbox resolves every alias itself, so there is nothing to warn about."""
    daemon: MailboxDaemon = await asyncio.to_thread(mailbox)
    lsp = network.lsp
    status = await asyncio.to_thread(
        mailboxctl,
        daemon,
        "--rpcserver",
        lsp.rpcserver,
        "--tlscertpath",
        str(lsp.tls_cert_path),
        "--macaroonpath",
        str(daemon.macaroon_path),
        "--network",
        "regtest",
        "status",
    )

    def warned() -> bool:
        return "SCID aliases lnd cannot resolve" in daemon.log()

    if network.generation is Generation.CUSTOM:
        assert "unresolvable_aliases" not in status, status
        assert not warned()
        return
    report = status["unresolvable_aliases"]
    assert report["checked"], report
    listed = {(c["peer"], tuple(c["aliases"])) for c in report["channels"]}
    # Other itest modules may have left channels of their own at the LSP: only these are known.
    for node, channel in (
        (network.sender, network.sender_channel),
        (network.recipient, network.recipient_channel),
    ):
        assert channel is not None
        assert channel.alias_scids, f"lnd gave the {node.name}'s channel no alias"
        aliases = tuple(format_scid(a) for a in channel.alias_scids)
        assert (node.pubkey_hex, aliases) in listed, report
    peers = {peer for peer, _ in listed}
    assert wallets.phone.node_id not in peers, report
    assert wallets.payer.node_id not in peers, report
    # The daemon checks in the background, beside its streams: it may speak after status.
    await asyncio.to_thread(
        wait_for, "the daemon's alias warning", warned, timeout=30, alive=[daemon.process]
    )
