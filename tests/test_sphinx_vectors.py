"""BOLT 4's published vectors, reproduced value by value.

The files in tests/vectors/ are the spec's, unchanged. A missing file is a failure, not a
skip: these tests are the proof that peel and the builders speak the same bytes as every
other implementation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey

from lndmailbox.onion import (
    BlindedHopSpec,
    Forward,
    LocalNodeKey,
    PathIdNotFinalError,
    Receive,
    build_onion_message,
    build_packet,
    create_blinded_path,
    decrypt_recipient_data,
    next_path_key,
    open_packet,
    peel,
    primitives,
    read_next_hop,
    tlv,
    wire,
)
from lndmailbox.onion.wire import BlindedPath, EncryptedData, OnionMessage

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> Any:
    path = VECTORS / name
    assert path.is_file(), f"test vector file missing: {path}"
    return json.loads(path.read_text())


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def pub(secret: bytes) -> bytes:
    return PrivateKey(secret).public_key.format()


# --- blinded-onion-message-onion-test.json ----------------------------------------------


def _onion_message_vector() -> Any:
    return load("blinded-onion-message-onion-test.json")


def test_onion_message_encrypted_data_round_trips() -> None:
    vector = _onion_message_vector()
    for hop in vector["generate"]["hops"]:
        raw = h(hop["encrypted_data_tlv"])
        data = EncryptedData.decode(raw)
        assert data.encode() == raw
        tlvs = hop["tlvs"]
        if "next_node_id" in tlvs:
            assert data.next_node_id == h(tlvs["next_node_id"])
        if "next_path_key_override" in tlvs:
            assert data.next_path_key_override == h(tlvs["next_path_key_override"])
            assert pub(h(tlvs["path_key_override_secret"])) == data.next_path_key_override
        if "path_id" in tlvs:
            assert data.path_id == h(tlvs["path_id"])
        if "padding" in tlvs:
            assert data.padding == h(tlvs["padding"])
        for key, value in tlvs.items():
            if key.startswith("unknown_tag_"):
                assert data.unknown[int(key.removeprefix("unknown_tag_"))] == h(value)


def test_onion_message_blinded_path_is_created_exactly() -> None:
    vector = _onion_message_vector()
    hops = vector["generate"]["hops"]
    route = vector["route"]
    # Dave's path Bob -> Carol -> Dave, created with Bob's path key secret.
    specs = [
        BlindedHopSpec(
            LocalNodeKey(h(d["privkey"])).pubkey,
            encrypted_data=EncryptedData.decode(h(g["encrypted_data_tlv"])),
        )
        for g, d in zip(hops[1:], vector["decrypt"]["hops"][1:], strict=True)
    ]
    dave_path = create_blinded_path(specs, h(hops[1]["path_key_secret"]))
    assert dave_path.first_path_key == h(hops[1]["E"])
    for made, want in zip(dave_path.hops, route["hops"][1:], strict=True):
        assert made.blinded_node_id == h(want["blinded_node_id"])
        assert made.encrypted_recipient_data == h(want["encrypted_recipient_data"])
    for made, want in zip(dave_path.hops, hops[1:], strict=True):
        assert made.blinded_node_id == h(want["blinded_node_id"])
        assert made.encrypted_recipient_data == h(want["encrypted_recipient_data"])

    # The sender's own prefix to Alice, joined with override: the whole route of the vector.
    alice = LocalNodeKey(h(vector["decrypt"]["hops"][0]["privkey"])).pubkey
    assert alice == h(route["first_node_id"])
    alice_spec = BlindedHopSpec(
        alice,
        encrypted_data=EncryptedData.decode(h(hops[0]["encrypted_data_tlv"])),
        override_secret=h(hops[0]["tlvs"]["path_key_override_secret"]),
    )
    whole = create_blinded_path([alice_spec, *specs], h(hops[0]["path_key_secret"]))
    assert whole.first_node_id == h(route["first_node_id"])
    assert whole.first_path_key == h(route["first_path_key"])
    assert [x.blinded_node_id for x in whole.hops] == [
        h(x["blinded_node_id"]) for x in route["hops"]
    ]
    assert [x.encrypted_recipient_data for x in whole.hops] == [
        h(x["encrypted_recipient_data"]) for x in route["hops"]
    ]


def test_onion_message_is_built_exactly() -> None:
    vector = _onion_message_vector()
    hops = vector["generate"]["hops"]
    decrypt = vector["decrypt"]["hops"]
    specs = [
        BlindedHopSpec(
            LocalNodeKey(h(d["privkey"])).pubkey,
            encrypted_data=EncryptedData.decode(h(g["encrypted_data_tlv"])),
        )
        for g, d in zip(hops[1:], decrypt[1:], strict=True)
    ]
    dave_path = create_blinded_path(specs, h(hops[1]["path_key_secret"]))
    alice = LocalNodeKey(h(decrypt[0]["privkey"])).pubkey
    first, message = build_onion_message(
        dave_path,
        {1: h(vector["onionmessage"]["unknown_tag_1"])},
        h(vector["generate"]["session_key"]),
        intro_hops=[alice],
        intro_path_key=h(hops[0]["path_key_secret"]),
    )
    assert first == alice
    assert message.onion == h(vector["onionmessage"]["onion_message_packet"])
    assert message.encode_with_type() == h(decrypt[0]["onion_message"])


async def test_onion_message_is_peeled_hop_by_hop() -> None:
    vector = _onion_message_vector()
    decrypt = vector["decrypt"]["hops"]
    generate = vector["generate"]["hops"]
    for i, hop in enumerate(decrypt):
        message = OnionMessage.decode_with_type(h(hop["onion_message"]))
        assert message.path_key == h(generate[i]["E"])
        node = LocalNodeKey(h(hop["privkey"]))
        result = await peel(message.path_key, message.onion, node)
        if i + 1 < len(decrypt):
            assert isinstance(result, Forward)
            assert result.next_node_id == h(hop["next_node_id"])
            assert result.short_channel_id is None
            assert result.encrypted_recipient_data == h(generate[i]["encrypted_recipient_data"])
            # The shortcut (path-key ECDH alone, on what lnd 0.21 publishes) agrees.
            shortcut = await read_next_hop(
                message.path_key, h(generate[i]["encrypted_recipient_data"]), node
            )
            assert shortcut == result.next_hop
            after = OnionMessage.decode_with_type(h(decrypt[i + 1]["onion_message"]))
            assert result.next_path_key == after.path_key
            assert result.next_onion == after.onion
            assert len(result.next_onion) == len(message.onion)
            assert result.message.encode_with_type() == h(decrypt[i + 1]["onion_message"])
        else:
            assert isinstance(result, Receive)
            tlvs = hop["tlvs"]
            assert result.payload[1] == h(tlvs["unknown_tag_1"])
            assert result.payload[4] == h(tlvs["encrypted_recipient_data"])
            assert result.path_id == h(generate[i]["tlvs"]["path_id"])
            with pytest.raises(PathIdNotFinalError):  # a final hop's data names no next hop
                await read_next_hop(message.path_key, result.payload[4], node)
            assert result.reply_path is None
            assert tlv.encode_tlv_stream(result.encrypted_data) == h(
                generate[i]["encrypted_data_tlv"]
            )


def test_onion_message_intermediate_values() -> None:
    """ss, the blinded node id tweak, E and rho of every hop of the generate section."""
    vector = _onion_message_vector()
    decrypt = vector["decrypt"]["hops"]
    for hop, node in zip(vector["generate"]["hops"], decrypt, strict=True):
        key = LocalNodeKey(h(node["privkey"]))
        e_secret = h(hop["path_key_secret"])
        assert pub(e_secret) == h(hop["E"])
        ss = key.ecdh_sync(h(hop["E"]))
        assert ss == h(hop["ss"])
        assert PrivateKey(e_secret).ecdh(key.pubkey) == ss
        assert primitives.hmac256(b"blinded_node_id", ss) == h(
            hop["HMAC256('blinded_node_id', ss)"]
        )
        assert primitives.hmac256(b"rho", ss) == h(hop["rho"])
        assert primitives.sha256(h(hop["E"]) + ss) == h(hop["H(E || ss)"])
        # next_e: the next path key secret before any override, with a trailing 01 flag.
        factor = int.from_bytes(h(hop["H(E || ss)"]), "big")
        next_e = int.from_bytes(e_secret, "big") * factor % primitives.CURVE_ORDER
        assert next_e.to_bytes(32, "big") + b"\x01" == h(hop["next_e"])


# --- route-blinding-test.json ------------------------------------------------------------


def _route_vector() -> Any:
    return load("route-blinding-test.json")


def test_route_blinding_encrypted_data_encodes_exactly() -> None:
    for hop in _route_vector()["generate"]["hops"]:
        tlvs = hop["tlvs"]
        relay = tlvs.get("payment_relay")
        constraints = tlvs.get("payment_constraints")
        features = tlvs.get("allowed_features")
        unknown = {
            int(k.removeprefix("unknown_tag_")): h(v)
            for k, v in tlvs.items()
            if k.startswith("unknown_tag_")
        }
        feature_bytes = None
        if features is not None:
            bits = features["features"]
            width = (max(bits) // 8 + 1) if bits else 0
            value = sum(1 << b for b in bits)
            feature_bytes = value.to_bytes(width, "big")
        data = EncryptedData(
            padding=h(tlvs["padding"]) if "padding" in tlvs else None,
            short_channel_id=(
                tlv.parse_scid(tlvs["short_channel_id"]) if "short_channel_id" in tlvs else None
            ),
            next_node_id=h(tlvs["next_node_id"]) if "next_node_id" in tlvs else None,
            path_id=h(tlvs["path_id"]) if "path_id" in tlvs else None,
            next_path_key_override=(
                h(tlvs["next_path_key_override"]) if "next_path_key_override" in tlvs else None
            ),
            payment_relay=(
                wire.PaymentRelay(
                    relay["cltv_expiry_delta"],
                    relay["fee_proportional_millionths"],
                    relay.get("fee_base_msat", 0),
                )
                if relay
                else None
            ),
            payment_constraints=(
                wire.PaymentConstraints(
                    constraints["max_cltv_expiry"], constraints["htlc_minimum_msat"]
                )
                if constraints
                else None
            ),
            allowed_features=feature_bytes,
            unknown=unknown,
        )
        assert data.encode() == h(hop["encoded_tlvs"])
        assert EncryptedData.decode(h(hop["encoded_tlvs"])) == data


def test_route_blinding_path_is_created_exactly() -> None:
    vector = _route_vector()
    hops = vector["generate"]["hops"]
    # Bob's route Bob -> Carol is spliced onto Eve's Dave -> Eve by Carol's override; Eve's
    # session key is the override's secret, so one call builds the concatenation.
    specs = []
    for i, hop in enumerate(hops):
        data = EncryptedData.decode(h(hop["encoded_tlvs"]))
        secret = None
        if data.next_path_key_override is not None:
            secret = h(hops[i + 1]["session_key"])
        specs.append(BlindedHopSpec(h(hop["node_id"]), encrypted_data=data, override_secret=secret))
    path = create_blinded_path(specs, h(hops[0]["session_key"]))
    route = vector["route"]
    assert path.first_node_id == h(route["first_node_id"])
    assert path.first_path_key == h(route["first_path_key"])
    for made, want, gen in zip(path.hops, route["hops"], hops, strict=True):
        assert made.blinded_node_id == h(want["blinded_node_id"]) == h(gen["blinded_node_id"])
        assert (
            made.encrypted_recipient_data == h(want["encrypted_data"]) == h(gen["encrypted_data"])
        )
    # The two halves made separately and concatenated give the same path.
    first = create_blinded_path(specs[:2], h(hops[0]["session_key"]))
    second = create_blinded_path(specs[2:], h(hops[2]["session_key"]))
    assert BlindedPath(first.first_node_id, first.first_path_key, first.hops + second.hops) == path
    for i, hop in enumerate(hops):
        assert pub(h(hop["path_privkey"])) == h(hop["path_key"])
        if "session_key" in hop:  # a path starts here: its first secret is the session key
            assert hop["path_privkey"] == hop["session_key"]
        if i + 1 < len(hops) and "session_key" not in hops[i + 1]:
            factor = primitives.sha256(h(hop["path_key"]) + h(hop["shared_secret"]))
            scalar = int.from_bytes(h(hop["path_privkey"]), "big")
            scalar = scalar * int.from_bytes(factor, "big") % primitives.CURVE_ORDER
            assert scalar.to_bytes(32, "big") == h(hops[i + 1]["path_privkey"])


def test_route_blinding_unblind() -> None:
    """Each hop's shared secret, blinded private key, decrypted data and next path key."""
    vector = _route_vector()
    generate = vector["generate"]["hops"]
    route = vector["route"]["hops"]
    for hop, gen, entry in zip(vector["unblind"]["hops"], generate, route, strict=True):
        node = LocalNodeKey(h(hop["node_privkey"]))
        path_key = h(hop["path_key"])
        ss = node.ecdh_sync(path_key)
        assert ss == h(gen["shared_secret"])
        assert primitives.hmac256(b"rho", ss) == h(gen["rho"])
        tweak = int.from_bytes(primitives.hmac256(b"blinded_node_id", ss), "big")
        blinded_priv = (
            int.from_bytes(h(hop["node_privkey"]), "big") * tweak % primitives.CURVE_ORDER
        )
        assert blinded_priv.to_bytes(32, "big") == h(hop["blinded_privkey"])
        assert pub(h(hop["blinded_privkey"])) == h(entry["blinded_node_id"])
        plain = decrypt_recipient_data(ss, h(entry["encrypted_data"]))
        assert plain == h(hop["decrypted_data"])
        data = EncryptedData.decode(plain)
        assert next_path_key(path_key, ss) == h(hop["next_path_key"])
        if "next_path_key_override" in hop:
            assert data.next_path_key_override == h(hop["next_path_key_override"])


# --- onion-test.json ---------------------------------------------------------------------


def test_payment_onion_key_schedule_and_hmacs() -> None:
    """The generic Sphinx packet: built byte for byte, then opened hop by hop."""
    vector = load("onion-test.json")
    generate = vector["generate"]
    assoc = h(generate["associated_data"])
    hops = []
    for hop in generate["hops"]:
        framed = h(hop["payload"])
        length, start = tlv.decode_bigsize(framed)
        assert start + length == len(framed)
        hops.append((h(hop["pubkey"]), framed[start:]))
    packet = build_packet(hops, h(generate["session_key"]), associated_data=assoc)
    assert packet == h(vector["onion"])

    current: bytes | None = packet
    for i, privkey in enumerate(vector["decode"]):
        assert current is not None
        node = LocalNodeKey(h(privkey))
        assert node.pubkey == hops[i][0]
        ss = node.ecdh_sync(current[1:34])
        payload, current = open_packet(current, ss, associated_data=assoc)
        assert payload == hops[i][1]
        if current is not None:
            assert len(current) == len(packet)
    assert current is None
