"""tlv.py, wire.py: BigSize, TLV streams and the onion-message records, against BOLT 1's vectors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lndmailbox.errors import OnionError
from lndmailbox.onion.tlv import (
    BigSizeError,
    LengthError,
    PointError,
    TlvError,
    WireError,
    decode_bigsize,
    decode_tlv_stream,
    encode_bigsize,
    encode_tlv_stream,
    format_scid,
    parse_scid,
    scid,
)
from lndmailbox.onion.wire import (
    ONION_MESSAGE_TYPE,
    BlindedHop,
    BlindedPath,
    EncryptedData,
    OnionMessage,
    OnionMessagePayload,
    PaymentConstraints,
    PaymentRelay,
)

POINT_A = bytes.fromhex("0324653eac434488002cc06bbfb7f10fe18991e35f9fe4302dbea6d2353dc0ab1c")
POINT_B = bytes.fromhex("027f31ebc5462c1fdce1b737ecff52d37d75dea43ce11c74d25aa297165faa2007")

# BOLT 1 Appendix A.
BIGSIZE_OK = [
    (0, "00"),
    (252, "fc"),
    (253, "fd00fd"),
    (65535, "fdffff"),
    (65536, "fe00010000"),
    (4294967295, "feffffffff"),
    (4294967296, "ff0000000100000000"),
    (18446744073709551615, "ffffffffffffffffff"),
]
BIGSIZE_BAD = [
    "fd00fc",
    "fe0000ffff",
    "ff00000000ffffffff",
    "fd00",
    "feffff",
    "ffffffffff",
    "",
    "fd",
    "fe",
    "ff",
]


@pytest.mark.parametrize(("value", "encoded"), BIGSIZE_OK)
def test_bigsize_vectors(value: int, encoded: str) -> None:
    assert encode_bigsize(value) == bytes.fromhex(encoded)
    assert decode_bigsize(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


@pytest.mark.parametrize("encoded", BIGSIZE_BAD)
def test_bigsize_rejects_short_and_non_canonical(encoded: str) -> None:
    with pytest.raises(BigSizeError) as info:
        decode_bigsize(bytes.fromhex(encoded))
    assert info.value.reason == "bad_bigsize"


def test_bigsize_reads_at_an_offset() -> None:
    assert decode_bigsize(b"\x99\xfd\x01\x00\x07", 1) == (256, 4)


def test_bigsize_encode_range() -> None:
    with pytest.raises(ValueError, match="negative"):
        encode_bigsize(-1)
    with pytest.raises(ValueError, match="64 bits"):
        encode_bigsize(1 << 64)


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_bigsize_round_trip(value: int) -> None:
    encoded = encode_bigsize(value)
    assert decode_bigsize(encoded) == (value, len(encoded))


# BOLT 1 Appendix B: streams every namespace must refuse.
TLV_BAD_ANY = [
    "fd",
    "fd01",
    "fd000100",
    "fd0101",
    "0ffd",
    "0ffd26",
    "0ffd2602",
    "0ffd000100",
    "0ffd0201" + "00" * 256,
    "1200",
    "fd010200",
    "fe0100000200",
    "ff010000000000000200",
]


@pytest.mark.parametrize("stream", TLV_BAD_ANY)
def test_tlv_decoding_failures(stream: str) -> None:
    with pytest.raises(TlvError):
        decode_tlv_stream(bytes.fromhex(stream), known_even={2, 254})


def test_tlv_types_must_strictly_increase() -> None:
    with pytest.raises(TlvError, match="strictly increase"):
        decode_tlv_stream(bytes.fromhex("0100" + "0100"))
    with pytest.raises(TlvError, match="strictly increase"):
        decode_tlv_stream(bytes.fromhex("0300" + "0100"))


def test_tlv_unknown_odd_kept_known_even_kept_unknown_even_fails() -> None:
    stream = bytes.fromhex("0100" + "0203aabbcc" + "fd023103123456")
    assert decode_tlv_stream(stream, known_even={2}) == {
        1: b"",
        2: bytes.fromhex("aabbcc"),
        561: bytes.fromhex("123456"),
    }
    with pytest.raises(TlvError, match="unknown even"):
        decode_tlv_stream(stream)


def test_tlv_empty_stream() -> None:
    assert decode_tlv_stream(b"") == {}
    assert encode_tlv_stream({}) == b""


def test_tlv_length_runs_past_end() -> None:
    with pytest.raises(TlvError, match="past the end"):
        decode_tlv_stream(bytes.fromhex("0105aabb"))


@given(st.dictionaries(st.integers(0, (1 << 64) - 1), st.binary(max_size=300), max_size=8))
def test_tlv_round_trip(records: dict[int, bytes]) -> None:
    encoded = encode_tlv_stream(records)
    assert decode_tlv_stream(encoded, known_even=records.keys()) == records


def test_wire_errors_are_onion_errors() -> None:
    for cls in (WireError, BigSizeError, TlvError, LengthError, PointError):
        assert issubclass(cls, OnionError)
    assert len({BigSizeError.reason, TlvError.reason, LengthError.reason, PointError.reason}) == 4


# --- encrypted_data_tlv ------------------------------------------------------------------


def test_encrypted_data_every_field_round_trips() -> None:
    data = EncryptedData(
        padding=bytes(3),
        short_channel_id=scid(700000, 1, 2),
        next_node_id=POINT_A,
        path_id=b"secret",
        next_path_key_override=POINT_B,
        payment_relay=PaymentRelay(144, 250, 1000),
        payment_constraints=PaymentConstraints(800000, 1),
        allowed_features=b"",
        unknown={65535: b"\x06\xc1"},
    )
    encoded = data.encode()
    assert EncryptedData.decode(encoded) == data
    assert list(decode_tlv_stream(encoded, known_even=range(0, 100, 2))) == [
        1,
        2,
        4,
        6,
        8,
        10,
        12,
        14,
        65535,
    ]


def test_encrypted_data_empty() -> None:
    assert EncryptedData().encode() == b""
    assert EncryptedData.decode(b"") == EncryptedData()


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        ("0207" + "00" * 7, TlvError),  # short_channel_id not 8 bytes
        ("0420" + "02" * 32, PointError),  # next_node_id too short
        ("0421" + "04" + "00" * 32, PointError),  # next_node_id not compressed
        ("0821" + "05" + "00" * 32, PointError),  # override not compressed
        ("0a05" + "00" * 5, TlvError),  # payment_relay too short
        ("0a0b" + "00" * 11, TlvError),  # payment_relay too long
        ("0a07" + "00" * 6 + "00", TlvError),  # fee_base_msat not minimal
        ("0c03000000", TlvError),  # payment_constraints too short
        ("0c05" + "00000000" + "00", TlvError),  # htlc_minimum_msat not minimal
        ("1000", TlvError),  # unknown even type 16
    ],
)
def test_encrypted_data_rejects(stream: str, error: type[WireError]) -> None:
    with pytest.raises(error):
        EncryptedData.decode(bytes.fromhex(stream))


def test_scid_helpers() -> None:
    value = parse_scid("0x0x1729")
    assert value == 1729
    assert format_scid(scid(539268, 845, 1)) == "539268x845x1"
    assert parse_scid(format_scid(scid(539268, 845, 1))) == scid(539268, 845, 1)
    with pytest.raises(ValueError, match="BLOCKxTXxOUT"):
        parse_scid("1:2:3")
    with pytest.raises(ValueError, match="out of range"):
        scid(1 << 24, 0, 0)


# --- blinded_path and onionmsg_tlv -------------------------------------------------------


def _path(first: bytes = POINT_A) -> BlindedPath:
    return BlindedPath(first, POINT_B, (BlindedHop(POINT_A, b"\x01\x02"), BlindedHop(POINT_B, b"")))


def test_blinded_path_round_trip() -> None:
    for first in (POINT_A, b"\x01" + scid(1, 2, 3).to_bytes(8, "big")):
        path = _path(first)
        assert BlindedPath.decode(path.encode()) == path
        assert POINT_B in path.points()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],  # truncated data
        lambda b: b + b"\x00",  # trailing byte
        lambda b: b[:33],  # no path key
        lambda b: b[:66],  # no num_hops
        lambda b: b"\x04" + b[1:],  # first node id not a compressed point
        lambda b: b[:67] + b"\x05" + b[68:],  # hop point broken
        lambda b: b[: 67 + 33] + b"\xff\xff" + b[67 + 35 :],  # enclen past the end
        lambda b: b[: 67 + 33] + b"\x00",  # enclen truncated
        lambda b: b"",
    ],
)
def test_blinded_path_rejects(mutate: Callable[[bytes], bytes]) -> None:
    with pytest.raises(WireError):
        BlindedPath.decode(mutate(_path().encode()))


def test_blinded_path_too_many_hops() -> None:
    path = BlindedPath(POINT_A, POINT_B, (BlindedHop(POINT_A, b""),) * 256)
    with pytest.raises(ValueError, match="255"):
        path.encode()


def test_onion_message_payload_round_trip() -> None:
    payload = OnionMessagePayload(
        encrypted_recipient_data=b"\x11" * 20,
        reply_path=_path(),
        records={1: b"hi", 64: b"\x00", 65537: b""},
    )
    assert OnionMessagePayload.decode(payload.encode()) == payload
    assert OnionMessagePayload.decode(b"") == OnionMessagePayload()
    with pytest.raises(TlvError):
        OnionMessagePayload.decode(bytes.fromhex("0600"))  # unknown even


# --- onion_message -----------------------------------------------------------------------


def test_onion_message_round_trip() -> None:
    message = OnionMessage(POINT_A, b"\x00" * 1366)
    body = message.encode()
    assert body[:33] == POINT_A
    assert body[33:35] == (1366).to_bytes(2, "big")
    assert OnionMessage.decode(body) == message
    typed = message.encode_with_type()
    assert typed[:2] == ONION_MESSAGE_TYPE.to_bytes(2, "big")
    assert OnionMessage.decode_with_type(typed) == message


def test_onion_message_extension_checked_and_dropped() -> None:
    message = OnionMessage(POINT_A, b"\x00" * 100)
    assert OnionMessage.decode(message.encode() + bytes.fromhex("0100")) == message
    with pytest.raises(TlvError):
        OnionMessage.decode(message.encode() + bytes.fromhex("0200"))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", LengthError),
        (POINT_A + b"\x00", LengthError),
        (POINT_A + b"\x00\x10" + b"\x00" * 15, LengthError),  # len past the end
        (POINT_A + b"\x00\x10" + b"\x00" * 16, LengthError),  # packet too short to hold a hop
        (b"\x04" + POINT_A[1:] + b"\x00\x00", PointError),
    ],
)
def test_onion_message_rejects(body: bytes, error: type[WireError]) -> None:
    with pytest.raises(error):
        OnionMessage.decode(body)


def test_onion_message_wrong_type() -> None:
    with pytest.raises(LengthError):
        OnionMessage.decode_with_type(b"\x02\x00" + OnionMessage(POINT_A, bytes(100)).encode())


@given(st.binary(max_size=400))
def test_decoders_raise_only_wire_errors(data: bytes) -> None:
    for decode in (
        OnionMessage.decode,
        OnionMessage.decode_with_type,
        BlindedPath.decode,
        EncryptedData.decode,
        OnionMessagePayload.decode,
        decode_tlv_stream,
    ):
        with contextlib.suppress(WireError):
            decode(data)
