"""A regtest Lightning network of three real lnd nodes around one btcd.

    sender ──channel── LSP ──private channel with an SCID alias── recipient

The LSP is the node the mailbox serves. The recipient runs with ``--nolisten`` like a phone
wallet: it is online exactly while it holds an outbound connection to the LSP, and after
``lncli disconnect`` it stays offline (lnd forgets a peer it was told to disconnect from, and
the LSP cannot dial a node that does not listen). The LSP funds both channels; the sender's
channel is what lnd >= 0.21 wants before it accepts onion messages from a peer (its
channel-presence gate), so no ``protocol.onion-msg-relay-all`` is needed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from itest.btcd import Btcd
from itest.build import ChainBinaries, Generation
from itest.lndnode import LndNode
from itest.process import wait_for

CHANNEL_SATS = 1_000_000
COINBASE_MATURITY = 100


@dataclass(frozen=True)
class Channel:
    short_channel_id: int
    channel_point: str
    alias_scids: tuple[int, ...] = ()
    """The LSP's SCID aliases of the channel (private, with option-scid-alias negotiated)."""


class Network:
    """``node_args`` adds lnd flags to the node of that name (``sender``, ``lsp``, ``recipient``)."""

    def __init__(
        self,
        binaries: ChainBinaries,
        generation: Generation,
        workdir: Path,
        *,
        node_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.generation = generation
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        lnd = binaries.lnd[generation]
        self.btcd = Btcd(binaries.btcd, workdir / "btcd", self.log_dir)
        args = node_args or {}

        def node(name: str, *, listen: bool = True) -> LndNode:
            return LndNode(
                name,
                lnd,
                generation,
                self.btcd,
                workdir / name,
                self.log_dir,
                listen=listen,
                extra_args=args.get(name, ()),
            )

        unknown = set(args) - {"sender", "lsp", "recipient"}
        if unknown:
            raise ValueError(f"no such node in the network: {sorted(unknown)}")
        self.sender = node("sender")
        self.lsp = node("lsp")
        self.recipient = node("recipient", listen=False)
        self.sender_channel: Channel | None = None
        self.recipient_channel: Channel | None = None
        self.timings: dict[str, float] = {}

    @property
    def nodes(self) -> tuple[LndNode, LndNode, LndNode]:
        return (self.sender, self.lsp, self.recipient)

    def log_files(self) -> list[Path]:
        """Every log a failure report should keep."""
        files = [self.btcd.process.log_path]
        for node in self.nodes:
            files += [node.process.log_path, node.log_file]
        return files

    def _mark(self, what: str, since: float) -> float:
        now = time.monotonic()
        self.timings[what] = round(now - since, 1)
        return now

    def start(self) -> None:
        t = time.monotonic()
        # btcd mines only to addresses it was started with, and lnd needs a running btcd to
        # create its wallet: so the LSP makes its wallet against a first btcd and is stopped
        # before btcd restarts with the LSP's address (lnd does not always find a restarted
        # btcd again while it waits for the chain to sync).
        self.btcd.start()
        self.lsp.start()
        mining_address = self.lsp.new_address()
        self.lsp.stop()
        self.btcd.restart(mining_address)
        self.btcd.generate(COINBASE_MATURITY + 10)
        for node in self.nodes:
            node.start()
        t = self._mark("start", t)
        self.wait_synced()
        wait_for(
            "the LSP's coinbase outputs to mature",
            lambda: int(self.lsp.lncli("walletbalance")["confirmed_balance"]) > 4 * CHANNEL_SATS,
            timeout=60,
        )
        t = self._mark("fund", t)
        self.sender.connect(self.lsp)
        self.recipient.connect(self.lsp)
        self.sender_channel = self.open_channel(self.sender, private=True)
        self.recipient_channel = self.open_channel(self.recipient, private=True)
        self._mark("channels", t)

    def wait_synced(self) -> None:
        height = self.btcd.height()
        for node in self.nodes:
            node.wait_synced(height)

    def open_channel(self, peer: LndNode, *, private: bool) -> Channel:
        """The LSP opens a channel to ``peer`` and waits until both sides see it active."""
        args = [
            "openchannel",
            f"--node_key={peer.pubkey_hex}",
            f"--local_amt={CHANNEL_SATS}",
            "--sat_per_vbyte=2",
        ]
        if private:
            args.append("--private")
        txid = str(self.lsp.lncli(*args)["funding_txid"])
        wait_for(
            "the funding transaction in btcd's mempool",
            lambda: txid in self.btcd.call("getrawmempool"),
            timeout=30,
        )
        self.btcd.generate(6)

        def funded_by(node: LndNode, other: LndNode) -> list[dict[str, object]]:
            return [
                c
                for c in node.channels(other, active_only=True)
                if str(c["channel_point"]).startswith(f"{txid}:")
            ]

        wait_for(
            f"channel LSP<->{peer.name} to be active on both sides",
            lambda: funded_by(self.lsp, peer) and funded_by(peer, self.lsp),
            timeout=90,
            alive=[self.lsp.process, peer.process],
        )
        (channel,) = funded_by(self.lsp, peer)
        # lncli (0.20.2 and 0.21.3) prints the 32-byte channel id as "chan_id" and the SCID
        # as "scid"; older lncli printed the SCID as "chan_id".
        scid = channel.get("scid", channel["chan_id"])
        listed = channel.get("alias_scids") or []
        assert isinstance(listed, list)
        aliases = tuple(int(str(a)) for a in listed)
        return Channel(int(str(scid)), str(channel["channel_point"]), aliases)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.btcd.stop()

    # Recipient on and off line ---------------------------------------------------------------

    def take_recipient_offline(self) -> None:
        """The recipient drops its connection to the LSP and both sides see it gone."""
        self.recipient.disconnect(self.lsp)
        wait_for(
            "the LSP to see the recipient offline",
            lambda: not self.lsp.is_connected(self.recipient),
            timeout=30,
        )

    def bring_recipient_online(self) -> None:
        self.recipient.connect(self.lsp)
        wait_for(
            "the LSP to see the recipient online",
            lambda: self.lsp.is_connected(self.recipient),
            timeout=30,
        )

    def ensure_sender_connected(self) -> None:
        if not self.sender.is_connected(self.lsp):
            self.sender.connect(self.lsp)
        wait_for(
            "sender <-> LSP connection", lambda: self.lsp.is_connected(self.sender), timeout=30
        )
