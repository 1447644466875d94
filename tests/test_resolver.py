"""Which SCID aliases lnd >= 0.21 cannot forward by: the rule, and simnet agreeing with it.

The facts come from lnd 0.21.3 (itest/test_alias_facts.py): a channel that confirmed before
use is in lnd's graph under its real SCID only; a private zero-conf channel under its base
alias only; a public zero-conf channel moves to its real SCID at 6 confirmations (lnd's
source).
"""

from __future__ import annotations

from typing import Any

import pytest
from simnet import Personality, SimNode

from lndmailbox.lnd import Channel, LndClient, UnresolvableAliases, unresolvable_aliases
from lndmailbox.onion import BlindedHopSpec, message_via
from lndmailbox.onion.tlv import scid

PEER = bytes.fromhex("02" + "11" * 32)
REAL = scid(800_000, 1, 0)
ALIAS = scid(16_000_000, 0, 1)
OTHER_ALIAS = scid(16_000_000, 0, 2)


def channel(**fields: Any) -> Channel:
    return Channel(**{"peer": PEER, "channel_point": "ab" * 32 + ":0", **fields})


@pytest.mark.parametrize(
    ("fields", "unresolvable"),
    [
        ({"chan_id": REAL}, ()),
        ({"chan_id": REAL, "alias_scids": (ALIAS,)}, (ALIAS,)),
        ({"chan_id": REAL, "alias_scids": (ALIAS, OTHER_ALIAS, ALIAS)}, (ALIAS, OTHER_ALIAS)),
        ({"chan_id": REAL, "alias_scids": (ALIAS,), "private": False}, (ALIAS,)),
        ({"chan_id": ALIAS, "alias_scids": (ALIAS,), "zero_conf": True}, ()),
        (
            {
                "chan_id": ALIAS,
                "alias_scids": (ALIAS,),
                "zero_conf": True,
                "zero_conf_confirmed_scid": REAL,
            },
            (),
        ),
        (
            {"chan_id": ALIAS, "alias_scids": (ALIAS, OTHER_ALIAS), "zero_conf": True},
            (OTHER_ALIAS,),
        ),
        (
            {"chan_id": ALIAS, "alias_scids": (ALIAS,), "zero_conf": True, "private": False},
            (),
        ),
        (
            {
                "chan_id": ALIAS,
                "alias_scids": (ALIAS,),
                "zero_conf": True,
                "private": False,
                "zero_conf_confirmed_scid": REAL,
            },
            (ALIAS,),
        ),
    ],
    ids=[
        "confirmed first, no alias",
        "confirmed first, an alias",
        "confirmed first, aliases repeated",
        "public, confirmed first",
        "private zero-conf",
        "private zero-conf, 6 confs",
        "private zero-conf, a second alias",
        "public zero-conf",
        "public zero-conf, 6 confs",
    ],
)
def test_an_alias_resolves_only_when_it_is_the_graphs_scid(
    fields: dict[str, Any], unresolvable: tuple[int, ...]
) -> None:
    c = channel(**fields)
    expected = (UnresolvableAliases(PEER, c.channel_point, c.chan_id, unresolvable),)
    assert unresolvable_aliases([c]) == (expected if unresolvable else ())


def test_channels_keep_their_order() -> None:
    first = channel(chan_id=scid(800_000, 2, 0), alias_scids=(OTHER_ALIAS,))
    fine = channel(chan_id=ALIAS, alias_scids=(ALIAS,), zero_conf=True)
    last = channel(chan_id=REAL, alias_scids=(scid(16_000_000, 0, 3),))
    assert [c.chan_id for c in unresolvable_aliases([first, fine, last])] == [
        first.chan_id,
        last.chan_id,
    ]


async def test_simnet_drops_exactly_the_aliases_the_rule_names() -> None:
    """The rule over what LndClient.list_channels reads from simnet, against what simnet's
    lnd 0.21 does with a message naming each alias of each kind of channel."""
    async with SimNode(Personality.LND_0_21) as node:
        sender = node.add_peer("sender", connect=True)
        node.open_channel(sender, scid(700_000, 1, 0))
        kinds: list[dict[str, Any]] = [
            {"scid": scid(800_000, 1, 0), "alias_scids": [scid(16_000_000, 0, 1)]},
            {"scid": scid(16_000_000, 0, 2), "zero_conf": True},
            {
                "scid": scid(16_000_000, 0, 3),
                "zero_conf": True,
                "confirmed_scid": scid(800_000, 3, 0),
            },
            {
                "scid": scid(16_000_000, 0, 4),
                "zero_conf": True,
                "confirmed_scid": scid(800_000, 4, 0),
                "private": False,
            },
        ]
        for i, kind in enumerate(kinds):
            node.open_channel(node.add_peer(f"phone{i}", connect=True), **kind)
        async with LndClient(node.endpoint) as lnd:
            named = {a for c in unresolvable_aliases(await lnd.list_channels()) for a in c.aliases}
        assert named == {scid(16_000_000, 0, 1), scid(16_000_000, 0, 4)}
        for c in node.channels[1:]:
            phone = node.peers[c.peer]
            for alias in c.alias_scids:
                route: list[bytes | BlindedHopSpec] = [
                    BlindedHopSpec(node.pubkey, short_channel_id=alias),
                    phone.pubkey,
                ]
                _, msg = message_via(route, {})
                result = await sender.send_onion_message(msg)
                dropped = result.drop_reason == "unknown_scid"
                assert dropped is (alias in named), (c, alias, result)
