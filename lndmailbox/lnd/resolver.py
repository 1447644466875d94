"""Which of a channel's SCIDs lnd >= 0.21 can forward an onion message by: pure.

lnd 0.21 resolves a blinded next hop's ``short_channel_id`` only in its channel graph
(``onionmessage/resolver.go`` ``GraphNodeResolver.RemotePubFromSCID`` ->
``FetchChannelEdgesByID``: an exact lookup, no alias manager), and the graph holds a
private channel under one SCID, its ListChannels ``chan_id`` (funding/manager.go; checked
against lnd 0.21.3 by itest/test_alias_facts.py):

- a channel that confirmed before use (with or without the scid-alias channel type): its
  real SCID;
- a zero-conf channel: its base alias, for good (its real SCID, ``zero_conf_confirmed_scid``
  from 6 confirmations, never enters the graph).

Any other alias of the channel names it nowhere lnd looks: a message naming it is dropped
inside lnd ("Failed to fetch channel edges for SCID ...: edge not found") and never
reaches the mailbox. LDK phones name the LSP's next hop by the alias the LSP sent in
channel_ready, so only zero-conf scid-alias channels let them be reached through lnd 0.21.

Only private channels are checked: a phone's channel is private, and the peer of a public
one is a routing node, not a phone.
On lnd 0.18 - 0.20 (the custom transport) the mailbox resolves every SCID itself
(:meth:`~lndmailbox.lnd.LndClient.channel_index`) and none of this applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lndmailbox.lnd.values import Channel
from lndmailbox.onion.tlv import format_scid

__all__ = ["UnresolvableAliases", "describe_unresolvable", "unresolvable_aliases"]

NAMED = 3
"""Channels :func:`describe_unresolvable` names; the rest are counted."""


@dataclass(frozen=True)
class UnresolvableAliases:
    """One private channel with aliases lnd >= 0.21 cannot forward an onion message by."""

    peer: bytes
    channel_point: str
    chan_id: int
    aliases: tuple[int, ...]
    """The channel's ``alias_scids`` lnd's graph does not hold it under, in lnd's order."""


def unresolvable_aliases(channels: Iterable[Channel]) -> tuple[UnresolvableAliases, ...]:
    """The private channels (in the order given) that have aliases lnd >= 0.21 does not
    resolve: every alias but ``chan_id``, the one SCID the graph holds the channel under."""
    found = []
    for channel in channels:
        if not channel.private:
            continue
        aliases = tuple(dict.fromkeys(a for a in channel.alias_scids if a != channel.chan_id))
        if aliases:
            found.append(
                UnresolvableAliases(channel.peer, channel.channel_point, channel.chan_id, aliases)
            )
    return tuple(found)


def describe_unresolvable(found: Sequence[UnresolvableAliases]) -> str:
    """What ``mailboxctl status`` and the daemon's log say of ``found`` (not empty): how
    many channels and peers, the first :data:`NAMED` by peer and aliases, the rest counted,
    what it means for a phone, and what to do."""
    named = ", ".join(
        f"{c.peer.hex()} {' '.join(format_scid(a) for a in c.aliases)}" for c in found[:NAMED]
    )
    if len(found) > NAMED:
        named += f" and {_plural(len(found) - NAMED, 'more channel')}"
    peers = len({c.peer for c in found})
    return (
        f"{_plural(len(found), 'private channel')} ({_plural(peers, 'peer')}) with SCID "
        f"aliases lnd cannot resolve: {named}; if these peers are phones on LDK, their "
        "blinded paths name the LSP's hop by these aliases and lnd drops those onion "
        "messages before the mailbox sees them: open phones zero-conf scid-alias channels"
    )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
