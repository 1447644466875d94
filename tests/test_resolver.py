"""Which SCID aliases lnd >= 0.21 cannot forward by: the rule, against lnd 0.21.3's facts.

The facts are itest/test_alias_facts.py's, taken from it as data: for each kind of private
channel an LSP opens to a phone and each moment of its life, whether lnd forwarded a
message naming the channel's alias (``EXPECTED``), and what ListChannels showed then (that
test asserts it: a confirmed-first channel's ``chan_id`` is its real SCID, a zero-conf
channel's is its alias, with the real SCID in ``zero_conf_confirmed_scid`` from 6
confirmations). The rule must name the alias exactly when lnd dropped it.
"""

from __future__ import annotations

from typing import Any

import pytest

from itest.channels import ChannelKind
from itest.test_alias_facts import EXPECTED, RESTART, SIX, UNCONFIRMED, X
from lndmailbox.lnd import Channel, UnresolvableAliases, unresolvable_aliases
from lndmailbox.lnd.resolver import describe_unresolvable
from lndmailbox.onion.tlv import scid

PEER = bytes.fromhex("02" + "11" * 32)
REAL = scid(800_000, 1, 0)
ALIAS = scid(16_000_000, 0, 1)
OTHER_ALIAS = scid(16_000_000, 0, 2)


def channel(**fields: Any) -> Channel:
    return Channel(**{"peer": PEER, "channel_point": "ab" * 32 + ":0", "private": True, **fields})


def as_lnd_lists_it(kind: ChannelKind, moment: str) -> Channel:
    """The LSP's ListChannels entry for a channel of ``kind`` at ``moment``."""
    if not kind.zero_conf:
        return channel(chan_id=REAL, alias_scids=(ALIAS,))
    confirmed = REAL if moment in (SIX, RESTART) else 0
    return channel(
        chan_id=ALIAS, alias_scids=(ALIAS,), zero_conf=True, zero_conf_confirmed_scid=confirmed
    )


FACTS = [
    (kind, moment, outcomes[0])
    for kind, by_moment in EXPECTED.items()
    for moment, outcomes in by_moment.items()
]


@pytest.mark.parametrize(
    ("kind", "moment", "alias_outcome"),
    FACTS,
    ids=[f"{kind.value}, {moment}" for kind, moment, _ in FACTS],
)
def test_the_rule_names_the_alias_exactly_when_lnd_dropped_it(
    kind: ChannelKind, moment: str, alias_outcome: str
) -> None:
    found = unresolvable_aliases([as_lnd_lists_it(kind, moment)])
    named = {a for c in found for a in c.aliases}
    assert (ALIAS in named) is (alias_outcome == X), (kind, moment, found)


def test_the_facts_cover_every_kind_and_the_zero_conf_life() -> None:
    """A guard on the data: an itest table that lost a kind or a moment would pass above."""
    assert set(EXPECTED) == set(ChannelKind)
    assert {UNCONFIRMED, SIX, RESTART} <= set(EXPECTED[ChannelKind.ZERO_CONF])


@pytest.mark.parametrize(
    ("fields", "unresolvable"),
    [
        ({"chan_id": REAL}, ()),
        ({"chan_id": REAL, "alias_scids": (ALIAS,)}, (ALIAS,)),
        ({"chan_id": REAL, "alias_scids": (ALIAS, OTHER_ALIAS, ALIAS)}, (ALIAS, OTHER_ALIAS)),
        ({"chan_id": ALIAS, "alias_scids": (ALIAS,), "zero_conf": True}, ()),
        (
            {"chan_id": ALIAS, "alias_scids": (ALIAS, OTHER_ALIAS), "zero_conf": True},
            (OTHER_ALIAS,),
        ),
        ({"chan_id": REAL, "alias_scids": (ALIAS,), "private": False}, ()),
    ],
    ids=[
        "confirmed first, no alias",
        "confirmed first, an alias",
        "confirmed first, aliases repeated",
        "zero-conf",
        "zero-conf, a second alias",
        "public: a routing node's, not checked",
    ],
)
def test_every_alias_but_chan_id_of_a_private_channel_is_named(
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


def found_on(n: int, *, peers: int) -> tuple[UnresolvableAliases, ...]:
    keys = [bytes([2, p]) + bytes(31) for p in range(peers)]
    return tuple(
        UnresolvableAliases(
            keys[i % peers], f"{i:064x}:0", scid(800_000, i, 0), (scid(16_000_000, 0, i),)
        )
        for i in range(n)
    )


def test_the_description_names_one_channel() -> None:
    (c,) = found = found_on(1, peers=1)
    assert describe_unresolvable(found) == (
        f"1 private channel (1 peer) with SCID aliases lnd cannot resolve: {c.peer.hex()} "
        "16000000x0x0; if these peers are phones on LDK, their blinded paths name the LSP's "
        "hop by these aliases and lnd drops those onion messages before the mailbox sees "
        "them: open phones zero-conf scid-alias channels"
    )


def test_the_description_names_three_channels_and_counts_the_rest() -> None:
    text = describe_unresolvable(found_on(5, peers=2))
    assert text.startswith("5 private channels (2 peers) with SCID aliases lnd cannot resolve: ")
    assert "16000000x0x2 and 2 more channels; if these peers" in text
    assert "16000000x0x3" not in text
    assert "16000000x0x2 and 1 more channel; " in describe_unresolvable(found_on(4, peers=4))
    several = UnresolvableAliases(PEER, "ab:0", REAL, (ALIAS, OTHER_ALIAS))
    assert f"{PEER.hex()} 16000000x0x1 16000000x0x2; " in describe_unresolvable([several])
