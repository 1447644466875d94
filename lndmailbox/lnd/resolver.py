"""Which of a channel's SCIDs lnd >= 0.21 can forward an onion message by: pure.

lnd 0.21 resolves a blinded next hop's ``short_channel_id`` only in its channel graph
(``onionmessage/resolver.go`` ``GraphNodeResolver.RemotePubFromSCID`` ->
``FetchChannelEdgesByID``: an exact lookup, no alias manager), and the graph holds a
channel under one SCID (funding/manager.go; checked against lnd 0.21.3 by
itest/test_alias_facts.py):

- a channel that confirmed before use (private, with or without the scid-alias channel
  type): its real SCID, ListChannels ``chan_id``;
- a zero-conf channel: its base alias, which is its ``chan_id``; a *public* one's edge
  moves to its real SCID (``zero_conf_confirmed_scid``) at 6 confirmations (read from
  lnd's source, not tested).

Any other alias of the channel names it nowhere lnd looks: a message naming it is dropped
inside lnd ("Failed to fetch channel edges for SCID ...: edge not found") and never
reaches the mailbox. LDK phones name the LSP's next hop by the alias the LSP sent in
channel_ready, so only zero-conf scid-alias channels let them be reached through lnd 0.21.
On lnd 0.18 - 0.20 (the custom transport) the mailbox resolves every SCID itself
(:meth:`~lndmailbox.lnd.LndClient.channel_index`) and none of this applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lndmailbox.lnd.values import Channel

__all__ = ["UnresolvableAliases", "unresolvable_aliases"]


@dataclass(frozen=True)
class UnresolvableAliases:
    """One channel with aliases lnd >= 0.21 cannot forward an onion message by."""

    peer: bytes
    channel_point: str
    chan_id: int
    aliases: tuple[int, ...]
    """The channel's ``alias_scids`` lnd's graph does not hold it under, in lnd's order."""


def unresolvable_aliases(channels: Iterable[Channel]) -> tuple[UnresolvableAliases, ...]:
    """The channels (in the order given) that have aliases lnd >= 0.21 does not resolve.

    The rule: an alias resolves only if it is the SCID the graph holds the channel under,
    ``chan_id``, or, for a public zero-conf channel with 6 confirmations, its
    ``zero_conf_confirmed_scid`` (then none of its aliases does).
    """
    found = []
    for channel in channels:
        graph_scid = channel.chan_id
        if channel.zero_conf and not channel.private and channel.zero_conf_confirmed_scid:
            graph_scid = channel.zero_conf_confirmed_scid
        aliases = tuple(dict.fromkeys(a for a in channel.alias_scids if a != graph_scid))
        if aliases:
            found.append(
                UnresolvableAliases(channel.peer, channel.channel_point, channel.chan_id, aliases)
            )
    return tuple(found)
