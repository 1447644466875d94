"""protos/ against lnd's published API: a wrong field number or type cannot hide.

The tables below are written by hand from lnd v0.21.2-beta's lnrpc/lightning.proto and
lnrpc/signrpc/signer.proto (every field lnd declares in these messages, kept or not).
Each field our generated descriptors declare must appear here with the same number and
type, every field the mailbox reads or writes must be declared, and the services must
have lnd's method names, request/response types and streaming.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

from lndmailbox.lnd.lnrpc import lightning_pb2, signer_pb2

# message -> {field name: (number, type)}; types as in the .proto ("repeated T", "map<K, V>",
# message and enum types by full name).
LND_FIELDS: dict[str, dict[str, tuple[int, str]]] = {
    "lnrpc.GetInfoRequest": {},
    "lnrpc.GetInfoResponse": {
        "version": (14, "string"),
        "commit_hash": (20, "string"),
        "identity_pubkey": (1, "string"),
        "alias": (2, "string"),
        "color": (17, "string"),
        "num_pending_channels": (3, "uint32"),
        "num_active_channels": (4, "uint32"),
        "num_inactive_channels": (15, "uint32"),
        "num_peers": (5, "uint32"),
        "block_height": (6, "uint32"),
        "block_hash": (8, "string"),
        "best_header_timestamp": (13, "int64"),
        "synced_to_chain": (9, "bool"),
        "synced_to_graph": (18, "bool"),
        "testnet": (10, "bool"),
        "chains": (16, "repeated lnrpc.Chain"),
        "uris": (12, "repeated string"),
        "features": (19, "map<uint32, lnrpc.Feature>"),
        "require_htlc_interceptor": (21, "bool"),
        "store_final_htlc_resolutions": (22, "bool"),
        "wallet_synced": (23, "bool"),
        "graph_cache_status": (24, "lnrpc.GraphCacheStatus"),
    },
    "lnrpc.Chain": {"chain": (1, "string"), "network": (2, "string")},
    "lnrpc.Feature": {
        "name": (2, "string"),
        "is_required": (3, "bool"),
        "is_known": (4, "bool"),
    },
    "lnrpc.ListPeersRequest": {"latest_error": (1, "bool")},
    "lnrpc.ListPeersResponse": {"peers": (1, "repeated lnrpc.Peer")},
    "lnrpc.Peer": {
        "pub_key": (1, "string"),
        "address": (3, "string"),
        "bytes_sent": (4, "uint64"),
        "bytes_recv": (5, "uint64"),
        "sat_sent": (6, "int64"),
        "sat_recv": (7, "int64"),
        "inbound": (8, "bool"),
        "ping_time": (9, "int64"),
        "sync_type": (10, "lnrpc.Peer.SyncType"),
        "features": (11, "map<uint32, lnrpc.Feature>"),
        "errors": (12, "repeated lnrpc.TimestampedError"),
        "flap_count": (13, "int32"),
        "last_flap_ns": (14, "int64"),
        "last_ping_payload": (15, "bytes"),
    },
    "lnrpc.PeerEventSubscription": {},
    "lnrpc.PeerEvent": {"pub_key": (1, "string"), "type": (2, "lnrpc.PeerEvent.EventType")},
    "lnrpc.ListChannelsRequest": {
        "active_only": (1, "bool"),
        "inactive_only": (2, "bool"),
        "public_only": (3, "bool"),
        "private_only": (4, "bool"),
        "peer": (5, "bytes"),
        "peer_alias_lookup": (6, "bool"),
    },
    "lnrpc.ListChannelsResponse": {"channels": (11, "repeated lnrpc.Channel")},
    "lnrpc.Channel": {
        "active": (1, "bool"),
        "remote_pubkey": (2, "string"),
        "channel_point": (3, "string"),
        "chan_id": (4, "uint64"),
        "capacity": (5, "int64"),
        "local_balance": (6, "int64"),
        "remote_balance": (7, "int64"),
        "commit_fee": (8, "int64"),
        "commit_weight": (9, "int64"),
        "fee_per_kw": (10, "int64"),
        "unsettled_balance": (11, "int64"),
        "total_satoshis_sent": (12, "int64"),
        "total_satoshis_received": (13, "int64"),
        "num_updates": (14, "uint64"),
        "pending_htlcs": (15, "repeated lnrpc.HTLC"),
        "csv_delay": (16, "uint32"),
        "private": (17, "bool"),
        "initiator": (18, "bool"),
        "chan_status_flags": (19, "string"),
        "local_chan_reserve_sat": (20, "int64"),
        "remote_chan_reserve_sat": (21, "int64"),
        "static_remote_key": (22, "bool"),
        "commitment_type": (26, "lnrpc.CommitmentType"),
        "lifetime": (23, "int64"),
        "uptime": (24, "int64"),
        "close_address": (25, "string"),
        "push_amount_sat": (27, "uint64"),
        "thaw_height": (28, "uint32"),
        "local_constraints": (29, "lnrpc.ChannelConstraints"),
        "remote_constraints": (30, "lnrpc.ChannelConstraints"),
        "alias_scids": (31, "repeated uint64"),
        "zero_conf": (32, "bool"),
        "zero_conf_confirmed_scid": (33, "uint64"),
        "peer_alias": (34, "string"),
        "peer_scid_alias": (35, "uint64"),
        "memo": (36, "string"),
        "custom_channel_data": (37, "bytes"),
    },
    "lnrpc.ListAliasesRequest": {},
    "lnrpc.ListAliasesResponse": {"alias_maps": (1, "repeated lnrpc.AliasMap")},
    "lnrpc.AliasMap": {"base_scid": (1, "uint64"), "aliases": (2, "repeated uint64")},
    "lnrpc.SubscribeCustomMessagesRequest": {},
    "lnrpc.CustomMessage": {"peer": (1, "bytes"), "type": (2, "uint32"), "data": (3, "bytes")},
    "lnrpc.SendCustomMessageRequest": {
        "peer": (1, "bytes"),
        "type": (2, "uint32"),
        "data": (3, "bytes"),
    },
    "lnrpc.SendCustomMessageResponse": {"status": (1, "string")},
    "lnrpc.SubscribeOnionMessagesRequest": {},
    "lnrpc.OnionMessageUpdate": {
        "peer": (1, "bytes"),
        "path_key": (2, "bytes"),
        "onion": (3, "bytes"),
        "reply_path": (4, "lnrpc.BlindedPath"),
        "encrypted_recipient_data": (5, "bytes"),
        "custom_records": (6, "map<uint64, bytes>"),
    },
    "lnrpc.BlindedPath": {
        "introduction_node": (1, "bytes"),
        "blinding_point": (2, "bytes"),
        "blinded_hops": (3, "repeated lnrpc.BlindedHop"),
    },
    "lnrpc.BlindedHop": {"blinded_node": (1, "bytes"), "encrypted_data": (2, "bytes")},
    "lnrpc.SendOnionMessageRequest": {
        "peer": (1, "bytes"),
        "path_key": (2, "bytes"),
        "onion": (3, "bytes"),
    },
    "lnrpc.SendOnionMessageResponse": {"status": (1, "string")},
    "lnrpc.SignMessageRequest": {"msg": (1, "bytes"), "single_hash": (2, "bool")},
    "lnrpc.SignMessageResponse": {"signature": (1, "string")},
    "lnrpc.VerifyMessageRequest": {"msg": (1, "bytes"), "signature": (2, "string")},
    "lnrpc.VerifyMessageResponse": {"valid": (1, "bool"), "pubkey": (2, "string")},
    "signrpc.SharedKeyRequest": {
        "ephemeral_pubkey": (1, "bytes"),
        "key_loc": (2, "signrpc.KeyLocator"),
        "key_desc": (3, "signrpc.KeyDescriptor"),
    },
    "signrpc.SharedKeyResponse": {"shared_key": (1, "bytes")},
    "signrpc.KeyDescriptor": {
        "raw_key_bytes": (1, "bytes"),
        "key_loc": (2, "signrpc.KeyLocator"),
    },
    "signrpc.KeyLocator": {"key_family": (1, "int32"), "key_index": (2, "int32")},
}

# lnd's enums the mailbox relies on: name -> number.
LND_ENUMS: dict[str, dict[str, int]] = {
    "lnrpc.PeerEvent.EventType": {"PEER_ONLINE": 0, "PEER_OFFLINE": 1},
}

# service -> method -> (request, response, server streaming)
LND_METHODS: dict[str, dict[str, tuple[str, str, bool]]] = {
    "lnrpc.Lightning": {
        "GetInfo": ("lnrpc.GetInfoRequest", "lnrpc.GetInfoResponse", False),
        "ListPeers": ("lnrpc.ListPeersRequest", "lnrpc.ListPeersResponse", False),
        "SubscribePeerEvents": ("lnrpc.PeerEventSubscription", "lnrpc.PeerEvent", True),
        "ListChannels": ("lnrpc.ListChannelsRequest", "lnrpc.ListChannelsResponse", False),
        "ListAliases": ("lnrpc.ListAliasesRequest", "lnrpc.ListAliasesResponse", False),
        "SubscribeCustomMessages": (
            "lnrpc.SubscribeCustomMessagesRequest",
            "lnrpc.CustomMessage",
            True,
        ),
        "SendCustomMessage": (
            "lnrpc.SendCustomMessageRequest",
            "lnrpc.SendCustomMessageResponse",
            False,
        ),
        "SubscribeOnionMessages": (
            "lnrpc.SubscribeOnionMessagesRequest",
            "lnrpc.OnionMessageUpdate",
            True,
        ),
        "SendOnionMessage": (
            "lnrpc.SendOnionMessageRequest",
            "lnrpc.SendOnionMessageResponse",
            False,
        ),
        "SignMessage": ("lnrpc.SignMessageRequest", "lnrpc.SignMessageResponse", False),
        "VerifyMessage": ("lnrpc.VerifyMessageRequest", "lnrpc.VerifyMessageResponse", False),
    },
    "signrpc.Signer": {
        "DeriveSharedKey": ("signrpc.SharedKeyRequest", "signrpc.SharedKeyResponse", False),
    },
}

# Fields lndmailbox (client or simnet) reads or writes: they must be declared.
NEEDED: dict[str, set[str]] = {
    "lnrpc.GetInfoResponse": {"identity_pubkey", "alias", "version", "features", "chains"},
    "lnrpc.Chain": {"network"},
    "lnrpc.ListPeersResponse": {"peers"},
    "lnrpc.Peer": {"pub_key"},
    "lnrpc.PeerEvent": {"pub_key", "type"},
    "lnrpc.ListChannelsResponse": {"channels"},
    "lnrpc.Channel": {"remote_pubkey", "chan_id", "alias_scids", "zero_conf_confirmed_scid"},
    "lnrpc.ListAliasesResponse": {"alias_maps"},
    "lnrpc.AliasMap": {"base_scid", "aliases"},
    "lnrpc.CustomMessage": {"peer", "type", "data"},
    "lnrpc.SendCustomMessageRequest": {"peer", "type", "data"},
    "lnrpc.OnionMessageUpdate": {"peer", "path_key", "onion"},
    "lnrpc.SendOnionMessageRequest": {"peer", "path_key", "onion"},
    "lnrpc.SignMessageRequest": {"msg", "single_hash"},
    "lnrpc.SignMessageResponse": {"signature"},
    "lnrpc.VerifyMessageRequest": {"msg", "signature"},
    "lnrpc.VerifyMessageResponse": {"valid", "pubkey"},
    "signrpc.SharedKeyRequest": {"ephemeral_pubkey", "key_desc"},
    "signrpc.SharedKeyResponse": {"shared_key"},
}

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
}

FILES: tuple[FileDescriptor, ...] = (lightning_pb2.DESCRIPTOR, signer_pb2.DESCRIPTOR)


def _type_name(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        entry = field.message_type
        assert entry is not None
        if entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            return f"map<{_type_name(key)}, {_type_name(value)}>"
        base = entry.full_name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        base = field.enum_type.full_name
    else:
        base = _SCALARS[field.type]
    return f"repeated {base}" if field.is_repeated else base


def _all_messages() -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def walk(message: Descriptor) -> None:
        if message.GetOptions().map_entry:
            return
        found[message.full_name] = message
        for nested in message.nested_types:
            walk(nested)

    for file in FILES:
        for message in file.message_types_by_name.values():
            walk(message)
    return found


def test_every_declared_message_is_one_of_lnds() -> None:
    assert sorted(_all_messages()) == sorted(LND_FIELDS)


def test_every_declared_field_has_lnds_number_and_type() -> None:
    wrong = []
    for name, message in _all_messages().items():
        for field in message.fields:
            expected = LND_FIELDS[name].get(field.name)
            actual = (field.number, _type_name(field))
            if expected != actual:
                wrong.append(f"{name}.{field.name}: ours {actual}, lnd's {expected}")
    assert not wrong, "\n".join(wrong)


def test_fields_the_mailbox_uses_are_declared() -> None:
    messages = _all_messages()
    missing = [
        f"{name}.{field}"
        for name, fields in NEEDED.items()
        for field in sorted(fields)
        if field not in messages[name].fields_by_name
    ]
    assert not missing


def test_enums_have_lnds_values() -> None:
    event_type = lightning_pb2.PeerEvent.DESCRIPTOR.enum_types_by_name["EventType"]
    assert {v.name: v.number for v in event_type.values} == LND_ENUMS[event_type.full_name]


def test_services_have_lnds_methods() -> None:
    services = {
        service.full_name: service for file in FILES for service in file.services_by_name.values()
    }
    assert sorted(services) == sorted(LND_METHODS)
    for service_name, methods in LND_METHODS.items():
        service = services[service_name]
        actual = {
            m.name: (m.input_type.full_name, m.output_type.full_name, m.server_streaming)
            for m in service.methods
        }
        assert actual == methods
        assert not any(m.client_streaming for m in service.methods)


def test_packages_are_lnds() -> None:
    assert lightning_pb2.DESCRIPTOR.package == "lnrpc"
    assert signer_pb2.DESCRIPTOR.package == "signrpc"


def test_a_field_unknown_to_us_survives_a_round_trip() -> None:
    # lnd sends fields we do not declare; protobuf keeps them as unknown fields.
    channel = lightning_pb2.Channel(chan_id=123, remote_pubkey="02" * 33)
    memo = b"\xa2\x02\x04memo"  # field 36 (memo), length-delimited, "memo"
    parsed = lightning_pb2.Channel.FromString(channel.SerializeToString() + memo)
    assert parsed.chan_id == 123
    assert parsed.SerializeToString().endswith(memo)
