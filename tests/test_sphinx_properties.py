"""Property tests: random blinded paths deliver exactly, and no bit can be flipped unnoticed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lndmailbox.errors import OnionError
from lndmailbox.onion import (
    DEFAULT_PACKET_SIZE,
    LARGE_PACKET_SIZE,
    BlindedHopSpec,
    Forward,
    LocalNodeKey,
    Receive,
    build_onion_message,
    create_blinded_path,
    final_payload_room,
    message_via,
    peel,
    read_next_hop,
)
from lndmailbox.onion.tlv import encode_tlv_stream, scid
from lndmailbox.onion.wire import OnionMessage

CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
POOL = [LocalNodeKey(bytes([i + 1]) * 32) for i in range(12)]
BY_PUBKEY = {key.pubkey: key for key in POOL}
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Plan:
    intro: list[int]  # indexes into POOL
    route: list[int]
    kinds: list[str]  # per non-final route hop: "node", "scid" or "both"
    overrides: list[bytes | None]  # per non-final route hop: the override's secret
    padding: list[int]
    path_id: bytes | None
    packet_size: int
    equal_length: bool
    session_key: bytes
    path_session_key: bytes


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    total = draw(st.integers(1, 10))
    n_intro = draw(st.integers(0, min(3, total - 1)))
    n_route = total - n_intro
    nodes = st.integers(0, len(POOL) - 1)
    secrets = st.integers(1, CURVE_ORDER - 1).map(lambda n: n.to_bytes(32, "big"))
    return Plan(
        intro=draw(st.lists(nodes, min_size=n_intro, max_size=n_intro)),
        route=draw(st.lists(nodes, min_size=n_route, max_size=n_route)),
        kinds=draw(
            st.lists(
                st.sampled_from(["node", "scid", "both"]),
                min_size=n_route - 1,
                max_size=n_route - 1,
            )
        ),
        overrides=draw(st.lists(st.none() | secrets, min_size=n_route - 1, max_size=n_route - 1)),
        padding=draw(st.lists(st.integers(0, 12), min_size=n_route, max_size=n_route)),
        path_id=draw(st.none() | st.binary(max_size=32)),
        packet_size=draw(st.sampled_from([DEFAULT_PACKET_SIZE, LARGE_PACKET_SIZE])),
        equal_length=draw(st.booleans()),
        session_key=draw(secrets),
        path_session_key=draw(secrets),
    )


def _scid_for(position: int) -> int:
    return scid(700_000 + position, position, 1)


@given(plan=plans(), data=st.data())
@SETTINGS
def test_random_paths_deliver_the_exact_payload(plan: Plan, data: st.DataObject) -> None:
    route_keys = [POOL[i].pubkey for i in plan.route]
    specs = []
    for pos, node in enumerate(route_keys):
        if pos == len(route_keys) - 1:
            specs.append(BlindedHopSpec(node, path_id=plan.path_id, padding=plan.padding[pos]))
            continue
        kind = plan.kinds[pos]
        specs.append(
            BlindedHopSpec(
                node,
                next_node_id=route_keys[pos + 1] if kind in ("node", "both") else None,
                short_channel_id=_scid_for(pos) if kind in ("scid", "both") else None,
                override_secret=plan.overrides[pos],
                padding=plan.padding[pos],
            )
        )
    path = create_blinded_path(specs, plan.path_session_key, equal_length=plan.equal_length)
    intro = [POOL[i].pubkey for i in plan.intro]
    packet_size = plan.packet_size
    try:
        room = final_payload_room(path, intro_hops=intro, packet_size=packet_size)
    except ValueError:
        # Ten padded hops with overrides can outgrow a 1366-byte packet: the builder refuses
        # it cleanly, and the path is tried in the large packet instead.
        with pytest.raises(ValueError, match="not fit in a"):
            build_onion_message(
                path, {64: b""}, plan.session_key, intro_hops=intro, packet_size=packet_size
            )
        packet_size = LARGE_PACKET_SIZE
        room = final_payload_room(path, intro_hops=intro, packet_size=packet_size)
    # One final-hop payload (type >= 64) and an odd record below 64, sized to fit.
    value = data.draw(st.binary(max_size=max(0, min(room - 8, 3000))), label="value")
    payload = {data.draw(st.sampled_from([64, 65, 66, 68, 1001])): value}
    if room - 8 - len(value) >= 2 and data.draw(st.booleans(), label="odd"):
        payload[33] = b""
    assert len(encode_tlv_stream(payload)) <= room

    first, message = build_onion_message(
        path, payload, plan.session_key, intro_hops=intro, packet_size=packet_size
    )
    assert len(message.onion) == packet_size
    expected_nodes = intro + route_keys
    assert first == expected_nodes[0]
    receive = asyncio.run(_walk(plan, message, expected_nodes))
    assert {t: v for t, v in receive.payload.items() if t != 4} == payload
    assert receive.path_id == plan.path_id


async def _walk(plan: Plan, message: OnionMessage, nodes: list[bytes]) -> Receive:
    path_key, onion = message.path_key, message.onion
    n_intro = len(plan.intro)
    for position, node in enumerate(nodes):
        result = await peel(path_key, onion, BY_PUBKEY[node])
        if position == len(nodes) - 1:
            assert isinstance(result, Receive)
            return result
        assert isinstance(result, Forward)
        assert len(result.next_onion) == len(onion)
        # What lnd 0.21 publishes names the same next hop, with the path-key ECDH alone.
        shortcut = await read_next_hop(path_key, result.encrypted_recipient_data, BY_PUBKEY[node])
        assert shortcut == result.next_hop
        route_pos = position - n_intro
        if route_pos < 0 or plan.kinds[route_pos] in ("node", "both"):
            assert result.next_node_id == nodes[position + 1]
            assert result.short_channel_id is None
        else:
            assert result.next_node_id is None
            assert result.short_channel_id == _scid_for(route_pos)
        if route_pos >= 0 and plan.overrides[route_pos] is not None:
            override = plan.overrides[route_pos]
            assert override is not None
            assert result.next_path_key == LocalNodeKey(override).pubkey
        path_key, onion = result.next_path_key, result.next_onion
    raise AssertionError("the walk ended without a Receive")


# --- single bit flips --------------------------------------------------------------------


@cache
def _valid_messages() -> list[tuple[LocalNodeKey, OnionMessage]]:
    """Messages each valid for the given node: forward and final hops, both sizes."""
    a, b, c = POOL[0], POOL[1], POOL[2]
    out: list[tuple[LocalNodeKey, OnionMessage]] = []
    for size in (DEFAULT_PACKET_SIZE, LARGE_PACKET_SIZE):
        _, message = message_via(
            [a.pubkey, b.pubkey, c.pubkey],
            {64: b"invoice request"},
            path_id=b"id",
            packet_size=size,
            session_key=bytes([0x31]) * 32,
            path_session_key=bytes([0x32]) * 32,
        )
        out.append((a, message))
        _, final = message_via(
            [c.pubkey], {65: b"hello"}, packet_size=size, session_key=bytes([0x33]) * 32
        )
        out.append((c, final))
    for key, message in out:
        result = asyncio.run(peel(message.path_key, message.onion, key))
        assert isinstance(result, Forward if key is a else Receive)
    return out


def _flip(message: OnionMessage, bit: int) -> tuple[bytes, bytes]:
    joined = bytearray(message.path_key + message.onion)
    joined[bit // 8] ^= 1 << (bit % 8)
    return bytes(joined[:33]), bytes(joined[33:])


async def _must_fail(key: LocalNodeKey, path_key: bytes, onion: bytes) -> str:
    try:
        await peel(path_key, onion, key)
    except OnionError as e:
        return e.reason
    raise AssertionError("a flipped bit went unnoticed")


@given(which=st.integers(0, 3), bit=st.integers(0, (33 + LARGE_PACKET_SIZE) * 8 - 1))
@settings(max_examples=400, deadline=None)
def test_any_single_bit_flip_is_a_typed_error(which: int, bit: int) -> None:
    key, message = _valid_messages()[which]
    bit %= (33 + len(message.onion)) * 8
    reason = asyncio.run(_must_fail(key, *_flip(message, bit)))
    assert reason in {"bad_point", "bad_version", "bad_hmac"}


def test_every_header_and_hmac_bit_flip_is_a_typed_error() -> None:
    """Exhaustively: the path key, the version, the onion key and the HMAC."""
    key, message = _valid_messages()[0]
    size = 33 + len(message.onion)
    bits = [*range(0, (33 + 34) * 8), *range((size - 32) * 8, size * 8)]

    async def sweep() -> set[str]:
        return {await _must_fail(key, *_flip(message, bit)) for bit in bits}

    assert asyncio.run(sweep()) <= {"bad_point", "bad_version", "bad_hmac"}
