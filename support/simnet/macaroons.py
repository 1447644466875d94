"""lnd-style macaroons for simnet: baking, the V2 binary format, and lnd's checks.

A macaroon here is byte-for-byte what lnd hands out (``admin.macaroon``):

* V2 binary encoding (version byte 2, then packets ``type | uvarint len | data`` grouped in
  sections that end with a zero byte): location ``lnd``, the identifier, one section per
  caveat, an empty section, then the 32-byte signature.
* identifier = byte 3 (bakery version 3) followed by a protobuf ``MacaroonId{nonce = 1
  bytes, storageId = 2 bytes, ops = 3 repeated Op{entity = 1 string, actions = 2 repeated
  string}}``; lnd's storage id (root key id) is ``"0"``; ops are sorted by entity then action
  and grouped per entity.
* signature chain: ``k = HMAC-SHA256("macaroons-key-generator", root_key)``,
  ``sig = HMAC-SHA256(k, identifier)``, then ``sig = HMAC-SHA256(sig, caveat)`` for each
  first-party caveat.

:meth:`MacaroonService.check` refuses a call the way lnd's macaroon interceptor does, with
the same error texts (lnd returns them as plain errors, so gRPC reports them with status
``UNKNOWN``): ``expected 1 macaroon, got 0``, ``invalid ID``, ``verification failed:
signature mismatch after caveat verification``, ``permission denied``, ...
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

# lnd's location for every macaroon it bakes, and the id of its one root key.
LOCATION = "lnd"
DEFAULT_ROOT_KEY_ID = b"0"

# The bakery's identifier version for macaroons carrying their operations.
_ID_VERSION = 3
_MACAROON_V2 = 2
_KEY_GENERATOR = b"macaroons-key-generator"

_FIELD_EOS = 0
_FIELD_LOCATION = 1
_FIELD_IDENTIFIER = 2
_FIELD_VERIFICATION_ID = 4
_FIELD_SIGNATURE = 6

# The entities and actions lnd lets a macaroon name (rpcserver.go validEntities).
VALID_ENTITIES = frozenset(
    {"onchain", "offchain", "address", "message", "peers", "info", "invoices", "signer",
     "macaroon", "uri"}
)  # fmt: skip
VALID_ACTIONS = frozenset({"read", "write", "generate"})

# What lnd's admin.macaroon allows: every entity with read and write, plus
# signer:generate, macaroon:generate (lnd.go adminPermissions).
ADMIN_PERMISSIONS: tuple[str, ...] = (
    "onchain:read", "offchain:read", "address:read", "message:read", "peers:read",
    "info:read", "invoices:read", "signer:read", "macaroon:read",
    "onchain:write", "offchain:write", "address:write", "message:write", "peers:write",
    "info:write", "invoices:write", "signer:generate", "macaroon:generate", "macaroon:write",
)  # fmt: skip
READONLY_PERMISSIONS: tuple[str, ...] = tuple(p for p in ADMIN_PERMISSIONS if p.endswith(":read"))


class MacaroonError(Exception):
    """A macaroon lnd would refuse; the message is lnd's own text."""


@dataclass(frozen=True)
class Op:
    entity: str
    action: str

    @classmethod
    def parse(cls, permission: str) -> Op:
        """``"entity:action"`` (as ``lncli bakemacaroon`` takes it), ``uri:/pkg.Svc/Method`` too."""
        entity, sep, action = permission.partition(":")
        if not sep or not entity or not action:
            raise ValueError(f"permission {permission!r} is not entity:action")
        if entity not in VALID_ENTITIES:
            raise ValueError(f"invalid permission entity {entity!r}")
        if entity != "uri" and action not in VALID_ACTIONS:
            raise ValueError(f"invalid permission action {action!r}")
        return cls(entity, action)

    def __str__(self) -> str:
        return f"{self.entity}:{self.action}"


# --- small binary helpers -------------------------------------------------------------------


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(data: bytes, offset: int) -> tuple[int, int]:
    """(value, new offset); ValueError when the varint is cut short or too long."""
    value = 0
    shift = 0
    while True:
        if offset >= len(data):
            raise ValueError("varint value extends past end of buffer")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ValueError("varint value out of range")


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


# --- the identifier ---------------------------------------------------------------------------


def _proto_len_field(number: int, value: bytes) -> bytes:
    return _uvarint(number << 3 | 2) + _uvarint(len(value)) + value


def canonical_ops(ops: Iterable[Op]) -> list[Op]:
    """Sorted by (entity, action), duplicates removed: how the bakery stores them."""
    return sorted(set(ops), key=lambda op: (op.entity, op.action))


def encode_macaroon_id(nonce: bytes, storage_id: bytes, ops: Iterable[Op]) -> bytes:
    """Version byte 3 + protobuf MacaroonId, ops grouped per entity like the bakery does."""
    grouped: list[tuple[str, list[str]]] = []
    for op in canonical_ops(ops):
        if grouped and grouped[-1][0] == op.entity:
            grouped[-1][1].append(op.action)
        else:
            grouped.append((op.entity, [op.action]))
    body = bytearray()
    if nonce:
        body += _proto_len_field(1, nonce)
    if storage_id:
        body += _proto_len_field(2, storage_id)
    for entity, actions in grouped:
        op_bytes = bytearray(_proto_len_field(1, entity.encode()))
        for action in actions:
            op_bytes += _proto_len_field(2, action.encode())
        body += _proto_len_field(3, bytes(op_bytes))
    return bytes([_ID_VERSION]) + bytes(body)


def _proto_fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """A protobuf message as (field number, value); length-delimited and varint only."""
    fields: list[tuple[int, bytes | int]] = []
    offset = 0
    while offset < len(data):
        key, offset = _read_uvarint(data, offset)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("proto: illegal field number 0")
        if wire_type == 0:
            value, offset = _read_uvarint(data, offset)
            fields.append((number, value))
        elif wire_type == 2:
            length, offset = _read_uvarint(data, offset)
            if offset + length > len(data):
                raise ValueError("proto: unexpected EOF")
            fields.append((number, data[offset : offset + length]))
            offset += length
        elif wire_type == 1:
            offset += 8
        elif wire_type == 5:
            offset += 4
        else:
            raise ValueError(f"proto: illegal wireType {wire_type}")
        if offset > len(data):
            raise ValueError("proto: unexpected EOF")
    return fields


@dataclass(frozen=True)
class MacaroonId:
    nonce: bytes
    storage_id: bytes
    ops: tuple[Op, ...]

    @classmethod
    def decode(cls, identifier: bytes) -> MacaroonId:
        """Parse a version-3 identifier (the caller checked the version byte).

        ValueError carries the bakery's text.
        """
        nonce = b""
        storage_id = b""
        grouped: list[tuple[str, list[str]]] = []
        try:
            for number, value in _proto_fields(identifier[1:]):
                if not isinstance(value, bytes):
                    continue
                if number == 1:
                    nonce = value
                elif number == 2:
                    storage_id = value
                elif number == 3:
                    entity = ""
                    actions: list[str] = []
                    for op_number, op_value in _proto_fields(value):
                        if isinstance(op_value, bytes) and op_number == 1:
                            entity = op_value.decode("utf-8", "replace")
                        elif isinstance(op_value, bytes) and op_number == 2:
                            actions.append(op_value.decode("utf-8", "replace"))
                    grouped.append((entity, actions))
        except ValueError as e:
            raise ValueError(
                "cannot unmarshal macaroon id: proto: cannot parse invalid wire-format data"
            ) from e
        # The bakery only looks at the first op for emptiness.
        if not grouped or not grouped[0][1]:
            raise ValueError("no operations found in macaroon")
        ops = tuple(Op(entity, action) for entity, actions in grouped for action in actions)
        return cls(nonce, storage_id, ops)


# --- the macaroon -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Caveat:
    id: bytes
    verification_id: bytes = b""
    location: str = ""


@dataclass(frozen=True)
class Macaroon:
    location: str
    identifier: bytes
    caveats: tuple[Caveat, ...]
    signature: bytes

    @classmethod
    def mint(cls, root_key: bytes, identifier: bytes, location: str = LOCATION) -> Macaroon:
        derived = _hmac(_KEY_GENERATOR, root_key)
        return cls(location, identifier, (), _hmac(derived, identifier))

    def with_first_party_caveat(self, condition: str | bytes) -> Macaroon:
        """A new macaroon restricted further by ``condition`` (e.g. ``time-before <RFC3339>``)."""
        cid = condition.encode() if isinstance(condition, str) else condition
        return Macaroon(
            self.location, self.identifier, (*self.caveats, Caveat(cid)), _hmac(self.signature, cid)
        )

    def encode(self) -> bytes:
        """The V2 binary encoding (what lnd writes to ``admin.macaroon``)."""

        def packet(field: int, data: bytes) -> bytes:
            return _uvarint(field) + _uvarint(len(data)) + data

        out = bytearray([_MACAROON_V2])
        if self.location:
            out += packet(_FIELD_LOCATION, self.location.encode())
        out += packet(_FIELD_IDENTIFIER, self.identifier)
        out.append(_FIELD_EOS)
        for caveat in self.caveats:
            if caveat.location:
                out += packet(_FIELD_LOCATION, caveat.location.encode())
            out += packet(_FIELD_IDENTIFIER, caveat.id)
            if caveat.verification_id:
                out += packet(_FIELD_VERIFICATION_ID, caveat.verification_id)
            out.append(_FIELD_EOS)
        out.append(_FIELD_EOS)
        out += packet(_FIELD_SIGNATURE, self.signature)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Macaroon:
        """Parse the V2 binary encoding; MacaroonError with the Go library's texts."""
        if not data:
            raise MacaroonError("empty macaroon data")
        if data[0] != _MACAROON_V2:
            if chr(data[0]) in "0123456789abcdefABCDEF":
                # A V1 macaroon (simnet does not parse those): lnd refuses its version.
                if len(data) < 4:
                    raise MacaroonError("unmarshal v1: packet too short")
                raise MacaroonError("unknown macaroon version: v1")
            raise MacaroonError("cannot determine data format of binary-encoded macaroon")
        try:
            return cls._decode_v2(data)
        except ValueError as e:
            raise MacaroonError(f"unmarshal v2: {e}") from e

    @classmethod
    def _decode_v2(cls, data: bytes) -> Macaroon:
        offset = 1

        def read_packet() -> tuple[int, bytes]:
            nonlocal offset
            field, offset = _read_uvarint(data, offset)
            if field == _FIELD_EOS:
                return field, b""
            length, offset = _read_uvarint(data, offset)
            if offset + length > len(data):
                raise ValueError("field data extends past end of buffer")
            value = data[offset : offset + length]
            offset += length
            return field, value

        def read_section() -> list[tuple[int, bytes]]:
            packets: list[tuple[int, bytes]] = []
            previous = -1
            while True:
                if offset >= len(data):
                    raise ValueError("section extends past end of buffer")
                field, value = read_packet()
                if field == _FIELD_EOS:
                    return packets
                if field <= previous:
                    raise ValueError("fields out of order")
                packets.append((field, value))
                previous = field

        header = read_section()
        location = ""
        if header and header[0][0] == _FIELD_LOCATION:
            location = header[0][1].decode("utf-8", "replace")
            header = header[1:]
        if len(header) != 1 or header[0][0] != _FIELD_IDENTIFIER:
            raise ValueError("invalid macaroon header")
        identifier = header[0][1]
        caveats: list[Caveat] = []
        while True:
            section = read_section()
            if not section:
                break
            cav_location = ""
            if section[0][0] == _FIELD_LOCATION:
                cav_location = section[0][1].decode("utf-8", "replace")
                section = section[1:]
            if not section or section[0][0] != _FIELD_IDENTIFIER:
                raise ValueError("no identifier in caveat")
            cid = section[0][1]
            rest = section[1:]
            if not rest:
                if cav_location:
                    raise ValueError("location not allowed in first party caveat")
                caveats.append(Caveat(cid))
                continue
            if len(rest) != 1:
                raise ValueError("extra fields found in caveat")
            if rest[0][0] != _FIELD_VERIFICATION_ID:
                raise ValueError("invalid field found in caveat")
            caveats.append(Caveat(cid, rest[0][1], cav_location))
        field, signature = read_packet()
        if field != _FIELD_SIGNATURE:
            raise ValueError("unexpected field found instead of signature")
        if len(signature) != 32:
            raise ValueError("signature has unexpected length")
        return cls(location, identifier, tuple(caveats), signature)


# --- lnd's check ------------------------------------------------------------------------------


def _go_hex_decode(text: str) -> bytes:
    """hex.DecodeString with Go's error texts (lnd decodes the header with it)."""
    digits = "0123456789abcdefABCDEF"
    for ch in text:
        if ch not in digits:
            shown = f"U+{ord(ch):04X} '{ch}'" if ch.isprintable() else f"U+{ord(ch):04X}"
            raise MacaroonError(f"encoding/hex: invalid byte: {shown}")
    if len(text) % 2:
        raise MacaroonError("encoding/hex: odd length hex string")
    return bytes.fromhex(text)


def _check_caveat(condition: bytes, now: datetime) -> str | None:
    """None when satisfied, else the bakery's reason (lnd registers time-before among others)."""
    text = condition.decode("utf-8", "replace")
    name, _, arg = text.partition(" ")
    if name == "time-before":
        try:
            deadline = datetime.fromisoformat(arg.replace("Z", "+00:00"))
        except ValueError as e:
            return f"caveat {_go_quote(text)} not satisfied: {e}"
        if deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=UTC)
        if not now < deadline:
            return f"caveat {_go_quote(text)} not satisfied: macaroon has expired"
        return None
    return f"caveat {_go_quote(text)} not satisfied: caveat not recognized"


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_VERIFIED_LIMIT = 256
"""Verified macaroons remembered per service (a node serves a handful of clients)."""


class MacaroonService:
    """One lnd node's macaroon root key: bakes macaroons and checks them on each call."""

    def __init__(
        self,
        root_key: bytes | None = None,
        *,
        root_key_id: bytes = DEFAULT_ROOT_KEY_ID,
        location: str = LOCATION,
    ) -> None:
        self.root_key = root_key if root_key is not None else os.urandom(32)
        self.root_key_id = root_key_id
        self.location = location
        self._verified: dict[tuple[str, bytes, bytes], tuple[Macaroon, MacaroonId]] = {}

    def bake(self, permissions: Iterable[str], *, caveats: Sequence[str] = ()) -> bytes:
        """A macaroon (V2 binary) allowing ``permissions`` (``"entity:action"`` strings)."""
        ops = [Op.parse(p) for p in permissions]
        if not ops:
            raise ValueError("cannot mint a macaroon associated with no operations")
        identifier = encode_macaroon_id(os.urandom(16), self.root_key_id, ops)
        mac = Macaroon.mint(self.root_key, identifier, self.location)
        for condition in caveats:
            mac = mac.with_first_party_caveat(condition)
        return mac.encode()

    def bake_admin(self) -> bytes:
        return self.bake(ADMIN_PERMISSIONS)

    def check(
        self,
        header_values: Sequence[str],
        required: Sequence[Op],
        full_method: str,
        *,
        now: datetime | None = None,
    ) -> None:
        """Raise MacaroonError (lnd's message) unless the ``macaroon`` header allows the call.

        ``header_values`` are the values of every ``macaroon`` metadata entry; lnd wants
        exactly one. A call is allowed when the macaroon grants every op in ``required`` or
        the op ``uri:<full_method>``.
        """
        if len(header_values) != 1:
            raise MacaroonError(f"expected 1 macaroon, got {len(header_values)}")
        mac, mac_id = self._authentic(header_values[0])
        when = now if now is not None else datetime.now(UTC)
        for caveat in mac.caveats:
            failed = _check_caveat(caveat.id, when)
            if failed is not None:
                raise MacaroonError(failed)
        granted = set(mac_id.ops)
        if all(op in granted for op in required) or Op("uri", full_method) in granted:
            return
        raise MacaroonError("permission denied")

    def _authentic(self, header: str) -> tuple[Macaroon, MacaroonId]:
        """The macaroon in ``header``, decoded and its signature chain verified.

        What depends only on the bytes and the root key is remembered: a client sends the
        same macaroon with every call, and re-verifying it in Python would cost the daemon's
        benchmarks more than lnd's Go code costs the daemon. Caveats and permissions are
        checked on every call by the caller. Failures are not remembered.
        """
        cache_key = (header, self.root_key, self.root_key_id)
        known = self._verified.get(cache_key)
        if known is not None:
            return known
        mac = Macaroon.decode(_go_hex_decode(header))
        if not mac.identifier or mac.identifier[0] != _ID_VERSION:
            raise MacaroonError("invalid ID")
        try:
            mac_id = MacaroonId.decode(mac.identifier)
        except ValueError as e:
            raise MacaroonError(f"cannot retrieve macaroon: {e}") from e
        if mac_id.storage_id != self.root_key_id:
            raise MacaroonError(
                "cannot retrieve macaroon: cannot get macaroon: root key with id "
                f"{mac_id.storage_id.decode('utf-8', 'replace')} doesn't exist"
            )
        reason = self._verify_signature(mac)
        if reason is not None:
            raise MacaroonError(f"verification failed: {reason}")
        if len(self._verified) >= _VERIFIED_LIMIT:
            self._verified.clear()
        self._verified[cache_key] = (mac, mac_id)
        return mac, mac_id

    def _verify_signature(self, mac: Macaroon) -> str | None:
        sig = _hmac(_hmac(_KEY_GENERATOR, self.root_key), mac.identifier)
        for caveat in mac.caveats:
            if caveat.verification_id:
                # A third-party caveat needs a discharge macaroon; lnd's calls carry none.
                return f"cannot find discharge macaroon for caveat {caveat.id.hex()}"
            sig = _hmac(sig, caveat.id)
        if not hmac.compare_digest(sig, mac.signature):
            return "signature mismatch after caveat verification"
        return None


def time_before_caveat(deadline: datetime) -> str:
    """The caveat lnd adds for ``lncli constrainmacaroon --timeout``."""
    return "time-before " + deadline.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
