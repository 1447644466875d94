"""peel against each BOLT 4 reader rule for onion messages, one crafted packet per rule.

``craft`` seals whatever payload a test wants into a correctly encrypted and
authenticated layer for one node, so every check after the HMAC can be reached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from lndmailbox.errors import OnionError
from lndmailbox.onion import (
    LARGE_PACKET_SIZE,
    BlindedHopSpec,
    EncryptedDataError,
    ForbiddenFieldError,
    Forward,
    HmacError,
    LocalNodeKey,
    MissingNextHopError,
    MultiplePayloadsError,
    PathIdNotFinalError,
    PayloadLengthError,
    Receive,
    ReplyPathError,
    UnknownFeatureError,
    VersionError,
    build_onion_message,
    create_blinded_path,
    final_payload_room,
    message_via,
    peel,
    read_next_hop,
)
from lndmailbox.onion.tlv import (
    LengthError,
    PointError,
    TlvError,
    encode_bigsize,
    encode_tlv_stream,
)
from lndmailbox.onion.wire import (
    BlindedHop,
    BlindedPath,
    EncryptedData,
    PaymentConstraints,
    PaymentRelay,
)

NODE = LocalNodeKey(bytes([0x41]) * 32)
NEXT = LocalNodeKey(bytes([0x42]) * 32)
PATH_SECRET = bytes([0x51]) * 32
SESSION_SECRET = bytes([0x52]) * 32
NOT_ON_CURVE = bytes.fromhex("02" + "00" * 31 + "07")  # x = 7: x^3 + 7 is not a square


def _hmac(key: bytes, msg: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(msg)
    return mac.finalize()


def _pub(secret: bytes) -> bytes:
    return PrivateKey(secret).public_key.format()


def seal(node: LocalNodeKey, plain_area: bytes, *, size: int = 1366) -> tuple[bytes, bytes]:
    """``(path_key, onion)`` whose decrypted ``onionmsg_payloads`` for ``node`` are
    ``plain_area`` (zero-padded to the packet's payload area)."""
    area = size - 66
    assert len(plain_area) <= area
    path_ss = PrivateKey(PATH_SECRET).ecdh(node.pubkey)
    blinded = PublicKey(node.pubkey).multiply(_hmac(b"blinded_node_id", path_ss)).format()
    ss = PrivateKey(SESSION_SECRET).ecdh(blinded)
    stream = Cipher(algorithms.ChaCha20(_hmac(b"rho", ss), bytes(16)), None).encryptor()
    mix = stream.update(plain_area.ljust(area, b"\x00"))
    mac = _hmac(_hmac(b"mu", ss), mix)
    return _pub(PATH_SECRET), b"\x00" + _pub(SESSION_SECRET) + mix + mac


def encrypt_for(node: LocalNodeKey, data: bytes) -> bytes:
    """``encrypted_recipient_data`` carrying ``data`` for ``node`` under PATH_SECRET."""
    path_ss = PrivateKey(PATH_SECRET).ecdh(node.pubkey)
    return ChaCha20Poly1305(_hmac(b"rho", path_ss)).encrypt(bytes(12), data, None)


def craft(
    data: EncryptedData | bytes | None,
    records: Mapping[int, bytes] | None = None,
    *,
    final: bool = True,
    node: LocalNodeKey = NODE,
    size: int = 1366,
) -> tuple[bytes, bytes]:
    """A sealed layer whose payload holds ``records`` plus ``data`` encrypted for ``node``
    (``None``: no encrypted_recipient_data). A non-final layer gets a non-zero next HMAC."""
    payload_records = dict(records or {})
    if data is not None:
        raw = data.encode() if isinstance(data, EncryptedData) else data
        payload_records[4] = encrypt_for(node, raw)
    payload = encode_tlv_stream(payload_records)
    next_hmac = bytes(32) if final else b"\x01" * 32
    return seal(node, encode_bigsize(len(payload)) + payload + next_hmac, size=size)


FORWARD = EncryptedData(next_node_id=NEXT.pubkey)


async def expect(reason: str, path_key: bytes, onion: bytes) -> OnionError:
    with pytest.raises(OnionError) as info:
        await peel(path_key, onion, NODE)
    assert info.value.reason == reason
    return info.value


# --- the crafted layers themselves are sound ---------------------------------------------


async def test_crafted_forward_and_receive() -> None:
    result = await peel(*craft(FORWARD, final=False), NODE)
    assert isinstance(result, Forward)
    assert result.next_node_id == NEXT.pubkey
    assert result.short_channel_id is None
    result = await peel(*craft(EncryptedData(path_id=b"me"), {65: b"x"}), NODE)
    assert isinstance(result, Receive)
    assert result.path_id == b"me"
    assert result.payload[65] == b"x"
    assert result.encrypted_data == {6: b"me"}


# --- packet level ------------------------------------------------------------------------


async def test_version_must_be_zero() -> None:
    path_key, onion = craft(FORWARD, final=False)
    error = await expect("bad_version", path_key, b"\x01" + onion[1:])
    assert isinstance(error, VersionError)


@pytest.mark.parametrize("length", [0, 1, 66, 65536])
async def test_packet_length_bounds(length: int) -> None:
    error = await expect("bad_length", _pub(PATH_SECRET), bytes(length))
    assert isinstance(error, LengthError)


@pytest.mark.parametrize("size", [67 + 200, 1366, 4000, LARGE_PACKET_SIZE, 65535])
async def test_any_packet_size_the_spec_allows(size: int) -> None:
    _, message = message_via([NODE.pubkey, NEXT.pubkey], {65: b"hi"}, packet_size=size)
    result = await peel(message.path_key, message.onion, NODE)
    assert isinstance(result, Forward)
    assert len(result.next_onion) == size
    final = await peel(result.next_path_key, result.next_onion, NEXT)
    assert isinstance(final, Receive)
    assert final.payload[65] == b"hi"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda pk, on: (NOT_ON_CURVE, on),
        lambda pk, on: (b"\x04" + pk[1:], on),
        lambda pk, on: (pk[:32], on),
        lambda pk, on: (pk, on[:1] + NOT_ON_CURVE + on[34:]),
        lambda pk, on: (pk, on[:1] + b"\x05" + on[2:]),
    ],
)
async def test_points_must_be_valid(mangle: Callable[[bytes, bytes], tuple[bytes, bytes]]) -> None:
    path_key, onion = mangle(*craft(FORWARD, final=False))
    error = await expect("bad_point", path_key, onion)
    assert isinstance(error, PointError)


async def test_hmac_is_checked() -> None:
    path_key, onion = craft(FORWARD, final=False)
    error = await expect("bad_hmac", path_key, onion[:-1] + bytes([onion[-1] ^ 1]))
    assert isinstance(error, HmacError)
    # The right onion with another node's path key: the tweak, hence the HMAC, differs.
    await expect("bad_hmac", _pub(bytes([0x61]) * 32), onion)


async def test_two_ecdh_calls_path_key_first() -> None:
    calls: list[bytes] = []

    class Counting:
        async def ecdh(self, point: bytes) -> bytes:
            calls.append(point)
            return await NODE.ecdh(point)

    path_key, onion = craft(FORWARD, final=False)
    await peel(path_key, onion, Counting())
    assert len(calls) == 2
    assert calls[0] == path_key
    assert calls[1] != onion[1:34]


# --- payload framing and onionmsg_tlv ----------------------------------------------------


@pytest.mark.parametrize(
    "area",
    [
        b"\xfd\x00\x01",  # length not minimally encoded
        b"\xfd\x05\x00",  # 1280 bytes of payload + 32 of HMAC: past the 1300-byte area
        encode_bigsize(1300 - 3 - 31),  # no room left for the next HMAC
        b"\xff" + b"\x00" * 3,  # huge length, truncated: then non-canonical
    ],
)
async def test_payload_length_checked(area: bytes) -> None:
    error = await expect("bad_payload_length", *seal(NODE, area))
    assert isinstance(error, PayloadLengthError)


async def test_payload_filling_the_area_exactly_is_fine() -> None:
    area = 1300
    records = {4: encrypt_for(NODE, EncryptedData().encode())}
    base = len(encode_tlv_stream(records))
    filler_len = area - 32 - 3 - base - 4  # type byte + 3-byte length for the odd record
    records[65] = bytes(filler_len)
    payload = encode_tlv_stream(records)
    assert len(encode_bigsize(len(payload))) + len(payload) + 32 == area
    result = await peel(*seal(NODE, encode_bigsize(len(payload)) + payload + bytes(32)), NODE)
    assert isinstance(result, Receive)


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("0600"),  # unknown even type
        bytes.fromhex("0300" + "0100"),  # not increasing
        bytes.fromhex("0105aa"),  # record past the end of the payload
        b"\x01",  # type without length
    ],
)
async def test_onionmsg_tlv_must_parse(payload: bytes) -> None:
    error = await expect("bad_tlv", *seal(NODE, encode_bigsize(len(payload)) + payload + bytes(32)))
    assert isinstance(error, TlvError)


async def test_empty_payload_has_no_recipient_data() -> None:
    await expect("bad_encrypted_data", *seal(NODE, b"\x00" + bytes(32)))


@pytest.mark.parametrize(
    "extra",
    [{1: b""}, {2: BlindedPath(NEXT.pubkey, NEXT.pubkey, ()).encode()}, {64: b""}, {65: b""}],
)
async def test_non_final_hop_carries_only_recipient_data(extra: dict[int, bytes]) -> None:
    error = await expect("forbidden_field", *craft(FORWARD, extra, final=False))
    assert isinstance(error, ForbiddenFieldError)


async def test_final_hop_accepts_one_payload_and_odd_records() -> None:
    result = await peel(*craft(EncryptedData(), {1: b"a", 3: b"", 63: b"b", 64: b"req"}), NODE)
    assert isinstance(result, Receive)
    assert set(result.payload) == {1, 3, 4, 63, 64}


@pytest.mark.parametrize("records", [{64: b"", 66: b""}, {65: b"", 68: b""}, {65: b"", 101: b""}])
async def test_final_hop_more_than_one_payload(records: dict[int, bytes]) -> None:
    """Every type from 64 up is a payload field; one message carries at most one."""
    error = await expect("multiple_payloads", *craft(EncryptedData(), records))
    assert isinstance(error, MultiplePayloadsError)


async def test_final_hop_reply_path() -> None:
    reply = create_blinded_path(
        [BlindedHopSpec(NEXT.pubkey, next_node_id=NODE.pubkey), BlindedHopSpec(NODE.pubkey)],
        bytes([0x71]) * 32,
    )
    result = await peel(*craft(EncryptedData(), {2: reply.encode()}), NODE)
    assert isinstance(result, Receive)
    assert result.reply == reply
    assert result.reply_path == reply.encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        BlindedPath(NEXT.pubkey, NEXT.pubkey, (BlindedHop(NODE.pubkey, b"x"),)).encode() + b"\x00",
        BlindedPath(NEXT.pubkey, NOT_ON_CURVE, ()).encode(),
        BlindedPath(NEXT.pubkey, NEXT.pubkey, (BlindedHop(NOT_ON_CURVE, b""),)).encode(),
    ],
)
async def test_final_hop_bad_reply_path(raw: bytes) -> None:
    error = await expect("bad_reply_path", *craft(EncryptedData(), {2: raw}))
    assert isinstance(error, ReplyPathError)


# --- encrypted_recipient_data ------------------------------------------------------------


@pytest.mark.parametrize("final", [True, False])
async def test_recipient_data_required(final: bool) -> None:
    error = await expect("bad_encrypted_data", *craft(None, {1: b""} if final else {}, final=final))
    assert isinstance(error, EncryptedDataError)


async def test_recipient_data_must_decrypt() -> None:
    path_key, onion = craft(None, {4: encrypt_for(NEXT, FORWARD.encode())}, final=False)
    await expect("bad_encrypted_data", path_key, onion)
    path_key, onion = craft(None, {4: b"short"}, final=False)
    await expect("bad_encrypted_data", path_key, onion)


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("1000"),  # unknown even type 16
        bytes.fromhex("0300" + "0100"),  # not increasing
        bytes.fromhex("02070000000000000000"[:18]),  # scid of 7 bytes
        bytes.fromhex("0420") + bytes(32),  # next_node_id too short
        b"\xfd",  # broken BigSize
    ],
)
async def test_recipient_data_must_be_valid_tlv(raw: bytes) -> None:
    error = await expect("bad_encrypted_data", *craft(raw, final=False))
    assert isinstance(error, EncryptedDataError)


async def test_unknown_odd_recipient_data_is_kept() -> None:
    result = await peel(*craft(EncryptedData(unknown={561: b"\x01"}), {}), NODE)
    assert isinstance(result, Receive)
    assert result.encrypted_data[561] == b"\x01"


@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize(
    "data",
    [
        EncryptedData(next_node_id=NEXT.pubkey, payment_relay=PaymentRelay(1, 2, 3)),
        EncryptedData(next_node_id=NEXT.pubkey, payment_constraints=PaymentConstraints(1, 2)),
    ],
)
async def test_payment_fields_forbidden_in_onion_messages(data: EncryptedData, final: bool) -> None:
    error = await expect("forbidden_field", *craft(data, final=final))
    assert isinstance(error, ForbiddenFieldError)


@pytest.mark.parametrize("final", [True, False])
async def test_allowed_features(final: bool) -> None:
    ok = EncryptedData(next_node_id=NEXT.pubkey, allowed_features=b"")
    await peel(*craft(ok, final=final), NODE)
    zeros = EncryptedData(next_node_id=NEXT.pubkey, allowed_features=b"\x00\x00")
    await peel(*craft(zeros, final=final), NODE)
    for features in (b"\x01", b"\x80\x00", b"\x00\x02"):
        bad = EncryptedData(next_node_id=NEXT.pubkey, allowed_features=features)
        error = await expect("unknown_feature", *craft(bad, final=final))
        assert isinstance(error, UnknownFeatureError)


async def test_path_id_only_at_the_final_hop() -> None:
    data = EncryptedData(next_node_id=NEXT.pubkey, path_id=b"secret")
    error = await expect("path_id_not_final", *craft(data, final=False))
    assert isinstance(error, PathIdNotFinalError)
    assert isinstance(error, ForbiddenFieldError)
    result = await peel(*craft(data, final=True), NODE)
    assert isinstance(result, Receive)
    assert result.path_id == b"secret"


async def test_next_hop_required() -> None:
    error = await expect("missing_next_hop", *craft(EncryptedData(padding=bytes(4)), final=False))
    assert isinstance(error, MissingNextHopError)
    await expect(
        "missing_next_hop", *craft(EncryptedData(next_path_key_override=NEXT.pubkey), final=False)
    )


async def test_next_hop_by_scid() -> None:
    result = await peel(*craft(EncryptedData(short_channel_id=1729), final=False), NODE)
    assert isinstance(result, Forward)
    assert result.short_channel_id == 1729
    assert result.next_node_id is None


async def test_next_node_id_wins_over_scid() -> None:
    data = EncryptedData(short_channel_id=1729, next_node_id=NEXT.pubkey)
    result = await peel(*craft(data, final=False), NODE)
    assert isinstance(result, Forward)
    assert result.next_node_id == NEXT.pubkey
    assert result.short_channel_id is None


async def test_next_node_id_must_be_on_the_curve() -> None:
    await expect("bad_point", *craft(EncryptedData(next_node_id=NOT_ON_CURVE), final=False))


async def test_override_used_and_checked() -> None:
    override = _pub(bytes([0x77]) * 32)
    data = EncryptedData(next_node_id=NEXT.pubkey, next_path_key_override=override)
    result = await peel(*craft(data, final=False), NODE)
    assert isinstance(result, Forward)
    assert result.next_path_key == override
    bad = EncryptedData(next_node_id=NEXT.pubkey, next_path_key_override=NOT_ON_CURVE)
    await expect("bad_point", *craft(bad, final=False))


async def test_final_hop_ignores_next_hop_fields() -> None:
    data = EncryptedData(next_node_id=NEXT.pubkey, short_channel_id=5, path_id=b"p")
    result = await peel(*craft(data), NODE)
    assert isinstance(result, Receive)


# --- builders ----------------------------------------------------------------------------


def test_build_rejects_oversized_payload() -> None:
    path = create_blinded_path([BlindedHopSpec(NODE.pubkey)], PATH_SECRET)
    room = final_payload_room(path)
    value_room = room - 4  # one odd record: type byte, 3-byte length
    build_onion_message(path, {65: bytes(value_room)}, SESSION_SECRET)
    with pytest.raises(ValueError, match="do not fit"):
        build_onion_message(path, {65: bytes(value_room + 1)}, SESSION_SECRET)


def test_build_argument_checks() -> None:
    path = create_blinded_path([BlindedHopSpec(NODE.pubkey)], PATH_SECRET)
    with pytest.raises(ValueError, match="encrypted_recipient_data"):
        build_onion_message(path, {4: b""}, SESSION_SECRET)
    with pytest.raises(ValueError, match="node id"):
        build_onion_message(
            BlindedPath(b"\x00" + bytes(8), path.first_path_key, path.hops), {}, SESSION_SECRET
        )
    with pytest.raises(ValueError, match="no hops"):
        build_onion_message(BlindedPath(NODE.pubkey, path.first_path_key, ()), {}, SESSION_SECRET)
    with pytest.raises(ValueError, match="override_secret"):
        create_blinded_path(
            [
                BlindedHopSpec(
                    NODE.pubkey, next_node_id=NEXT.pubkey, next_path_key_override=NEXT.pubkey
                ),
                BlindedHopSpec(NEXT.pubkey),
            ],
            PATH_SECRET,
        )
    with pytest.raises(ValueError, match="private key"):
        LocalNodeKey(bytes(32))


def test_equal_length_padding() -> None:
    path = create_blinded_path(
        [
            BlindedHopSpec(NODE.pubkey, short_channel_id=1),
            BlindedHopSpec(NEXT.pubkey, next_node_id=NODE.pubkey, padding=300),
            BlindedHopSpec(NODE.pubkey, path_id=b"x" * 40),
        ],
        PATH_SECRET,
        equal_length=True,
    )
    assert len({len(hop.encrypted_recipient_data) for hop in path.hops}) == 1


async def test_cached_node_key_answers_like_the_key_and_asks_once_per_point() -> None:
    from lndmailbox.onion import CachedNodeKey, LocalNodeKey

    class Counting:
        def __init__(self, key: LocalNodeKey) -> None:
            self.key = key
            self.asked: list[bytes] = []

        async def ecdh(self, point: bytes) -> bytes:
            self.asked.append(point)
            return await self.key.ecdh(point)

    key = LocalNodeKey.generate()
    inner = Counting(key)
    cached = CachedNodeKey(inner, size=2)
    a, b, c = (LocalNodeKey.generate().pubkey for _ in range(3))
    for point in (a, a, b, a, c, b):
        assert await cached.ecdh(point) == await key.ecdh(point)
    # a's second use refreshes it, so c pushes b out, and b is asked again.
    assert inner.asked == [a, b, c, b]


# --- read_next_hop: the next hop from encrypted_recipient_data alone ------------------------


class CountingKey:
    """NODE's key, counting the points it is asked for."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    async def ecdh(self, point: bytes) -> bytes:
        self.asked.append(point)
        return await NODE.ecdh(point)


async def read_shortcut(data: EncryptedData | bytes, *, node: LocalNodeKey = NODE) -> Forward:
    """A crafted non-final layer: its peel, after checking read_next_hop agrees with it."""
    raw = data.encode() if isinstance(data, EncryptedData) else data
    path_key, onion = craft(raw, final=False, node=node)
    result = await peel(path_key, onion, node)
    assert isinstance(result, Forward)
    key = CountingKey()
    assert await read_next_hop(path_key, encrypt_for(node, raw), key) == result.next_hop
    assert key.asked == [path_key], "one ECDH, on the path key"
    return result


async def test_the_shortcut_names_the_peels_next_hop() -> None:
    await read_shortcut(FORWARD)
    assert (await read_shortcut(EncryptedData(short_channel_id=1729))).short_channel_id == 1729
    both = await read_shortcut(EncryptedData(short_channel_id=1729, next_node_id=NEXT.pubkey))
    assert (both.next_node_id, both.short_channel_id) == (NEXT.pubkey, None)
    override = EncryptedData(next_node_id=NEXT.pubkey, next_path_key_override=_pub(b"\x77" * 32))
    await read_shortcut(override)
    await read_shortcut(encode_tlv_stream({4: NEXT.pubkey, 1: b"pad", 99: b"unknown odd"}))


@pytest.mark.parametrize(
    ("encrypted", "error"),
    [
        (b"", EncryptedDataError),  # shorter than its tag
        (bytes(40), EncryptedDataError),  # does not authenticate
        (encrypt_for(NEXT, FORWARD.encode()), EncryptedDataError),  # sealed for another node
        (encrypt_for(NODE, b"\x04\x21" + bytes(10)), EncryptedDataError),  # not valid TLV
        (encrypt_for(NODE, EncryptedData(padding=bytes(4)).encode()), MissingNextHopError),
        (encrypt_for(NODE, EncryptedData(path_id=b"mine").encode()), PathIdNotFinalError),
        (encrypt_for(NODE, EncryptedData(next_node_id=NOT_ON_CURVE).encode()), PointError),
        (
            encrypt_for(
                NODE,
                EncryptedData(
                    next_node_id=NEXT.pubkey, payment_relay=PaymentRelay(1, 2, 3)
                ).encode(),
            ),
            ForbiddenFieldError,
        ),
    ],
)
async def test_the_shortcut_refuses_what_the_peel_refuses(
    encrypted: bytes, error: type[OnionError]
) -> None:
    with pytest.raises(error):
        await read_next_hop(_pub(PATH_SECRET), encrypted, NODE)


async def test_the_shortcut_needs_the_path_key_the_data_was_sealed_under() -> None:
    encrypted = encrypt_for(NODE, FORWARD.encode())
    with pytest.raises(EncryptedDataError):
        await read_next_hop(_pub(bytes([0x61]) * 32), encrypted, NODE)
    with pytest.raises(PointError):
        await read_next_hop(NOT_ON_CURVE, encrypted, NODE)


async def test_peel_asks_path_node_for_the_path_key_only() -> None:
    path_key, onion = craft(FORWARD, final=False)
    path_keys, onion_keys = CountingKey(), CountingKey()
    result = await peel(path_key, onion, onion_keys, path_node=path_keys)
    assert isinstance(result, Forward)
    assert result.next_node_id == NEXT.pubkey
    assert path_keys.asked == [path_key]
    assert len(onion_keys.asked) == 1
    assert onion_keys.asked[0] != path_key
