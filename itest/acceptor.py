"""lnd's ChannelAcceptor, driven by the itest: the accepting side of zero-conf channel opens.

An lnd run with ``--protocol.zero-conf`` accepts a zero-conf channel only when a ChannelAcceptor
client answers ``accept=true, zero_conf=true, min_accept_depth=0`` (lnd's own ChannelAcceptor
chain: ``rpcserver.go`` ``rpcServer.ChannelAcceptor``, ``chanacceptor/rpcacceptor.go``). The
RPC is a bidirectional stream in which lnd sends the *requests* (``ChannelAcceptRequest``) and
the client the *responses* (``ChannelAcceptResponse``).

The product's trimmed stubs (``lndmailbox/lnd/lnrpc``) leave this RPC out, and the itest must
not add it there. So the two messages are real protobuf messages built at import time from a
descriptor of their own: a ``FileDescriptorProto`` in a private ``DescriptorPool`` (package
``lndmailbox_itest.acceptor``, which cannot clash with the product's ``lnrpc`` descriptors in
the default pool), holding only the fields the itest reads or sets, under the field numbers and
wire types of lnd's ``lnrpc/lightning.proto`` (v0.21.3-beta). Fields left out arrive as unknown
fields and are ignored. The stream is called by its method path, which names lnd's service, not
these messages. Two frozen dataclasses are the typed surface; the message classes stay inside.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from itest.lndnode import LndNode
from itest.process import wait_for
from itest.rpc import _Macaroon

METHOD = "/lnrpc.Lightning/ChannelAcceptor"

_PACKAGE = "lndmailbox_itest.acceptor"
_Field = descriptor_pb2.FieldDescriptorProto

# (name, number, type) as in lnd v0.21.3-beta's lnrpc/lightning.proto.
_REQUEST_FIELDS = (
    ("node_pubkey", 1, _Field.TYPE_BYTES),
    ("pending_chan_id", 3, _Field.TYPE_BYTES),
    ("funding_amt", 4, _Field.TYPE_UINT64),
    ("channel_flags", 13, _Field.TYPE_UINT32),
    # lnrpc.CommitmentType there; an enum is an int32 varint on the wire, so plain int32 here.
    ("commitment_type", 14, _Field.TYPE_INT32),
    ("wants_zero_conf", 15, _Field.TYPE_BOOL),
    ("wants_scid_alias", 16, _Field.TYPE_BOOL),
)
_RESPONSE_FIELDS = (
    ("accept", 1, _Field.TYPE_BOOL),
    ("pending_chan_id", 2, _Field.TYPE_BYTES),
    ("error", 3, _Field.TYPE_STRING),
    ("min_accept_depth", 10, _Field.TYPE_UINT32),
    ("zero_conf", 11, _Field.TYPE_BOOL),
)


def _message_classes() -> tuple[type[Message], type[Message]]:
    """(ChannelAcceptRequest, ChannelAcceptResponse), from a descriptor in a private pool."""
    file = descriptor_pb2.FileDescriptorProto(
        name="lndmailbox_itest/acceptor.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, fields in (
        ("ChannelAcceptRequest", _REQUEST_FIELDS),
        ("ChannelAcceptResponse", _RESPONSE_FIELDS),
    ):
        message = file.message_type.add(name=name)
        for field_name, number, kind in fields:
            message.field.add(
                name=field_name, number=number, type=kind, label=_Field.LABEL_OPTIONAL
            )
    descriptors = descriptor_pool.DescriptorPool().AddSerializedFile(file.SerializeToString())
    request, response = (
        message_factory.GetMessageClass(descriptors.message_types_by_name[name])
        for name in ("ChannelAcceptRequest", "ChannelAcceptResponse")
    )
    return request, response


_RequestMessage, _ResponseMessage = _message_classes()


def _field(message: Message, name: str) -> object:
    value: object = getattr(message, name)
    return value


def _bytes(message: Message, name: str) -> bytes:
    value = _field(message, name)
    assert isinstance(value, bytes), (name, value)
    return value


def _int(message: Message, name: str) -> int:
    value = _field(message, name)
    assert isinstance(value, int), (name, value)
    return value


def _bool(message: Message, name: str) -> bool:
    value = _field(message, name)
    assert isinstance(value, bool), (name, value)
    return value


@dataclass(frozen=True)
class ChannelAcceptRequest:
    """The fields of lnrpc.ChannelAcceptRequest the itest reads (numbers as in lightning.proto)."""

    node_pubkey: bytes = b""  # 1
    pending_chan_id: bytes = b""  # 3
    funding_amt: int = 0  # 4
    channel_flags: int = 0  # 13
    commitment_type: int = 0  # 14 (lnrpc.CommitmentType: 3 = ANCHORS)
    wants_zero_conf: bool = False  # 15
    wants_scid_alias: bool = False  # 16

    @classmethod
    def decode(cls, data: bytes) -> ChannelAcceptRequest:
        """Parses lnd's bytes; google.protobuf.message.DecodeError when they are malformed."""
        message = _RequestMessage.FromString(data)
        return cls(
            node_pubkey=_bytes(message, "node_pubkey"),
            pending_chan_id=_bytes(message, "pending_chan_id"),
            funding_amt=_int(message, "funding_amt"),
            channel_flags=_int(message, "channel_flags"),
            commitment_type=_int(message, "commitment_type"),
            wants_zero_conf=_bool(message, "wants_zero_conf"),
            wants_scid_alias=_bool(message, "wants_scid_alias"),
        )


@dataclass(frozen=True)
class ChannelAcceptResponse:
    """The fields of lnrpc.ChannelAcceptResponse the itest sets."""

    accept: bool  # 1
    pending_chan_id: bytes  # 2
    error: str = ""  # 3
    min_accept_depth: int = 0  # 10 (0: lnd's own default, bitcoin.defaultchanconfs)
    zero_conf: bool = False  # 11

    def encode(self) -> bytes:
        # Field by field: the stubs of a message class made at run time know no fields
        # (types-protobuf of 2026-11 types Message() without keyword arguments).
        message = _ResponseMessage()
        for name, value in dataclasses.asdict(self).items():
            setattr(message, name, value)
        return message.SerializeToString()


def accept_everything(request: ChannelAcceptRequest) -> ChannelAcceptResponse:
    """What an LSP's phone wallet answers: yes, zero-conf whenever the opener asks for it."""
    return ChannelAcceptResponse(
        accept=True,
        pending_chan_id=request.pending_chan_id,
        zero_conf=request.wants_zero_conf,
        min_accept_depth=0,
    )


_END = object()
_REQUESTED = f"[{METHOD}] requested"  # rpcperms/interceptor.go, at --debuglevel=debug


class ChannelAcceptor:
    """A ChannelAcceptor stream to one lnd, answered by ``decide`` on a thread of its own.

    Sync gRPC on a thread, so it does not depend on any test's event loop and may live in a
    fixture of any scope. ``requests`` keeps every request lnd sent, in order.
    """

    def __init__(
        self,
        node: LndNode,
        decide: Callable[[ChannelAcceptRequest], ChannelAcceptResponse] = accept_everything,
    ) -> None:
        self.node = node
        self.decide = decide
        self.requests: list[ChannelAcceptRequest] = []
        self.error: grpc.RpcError | None = None
        self._answers: queue.Queue[object] = queue.Queue()
        self._channel: grpc.Channel | None = None
        self._call: grpc.CallIterator[ChannelAcceptRequest] | None = None
        self._thread: threading.Thread | None = None

    def _outgoing(self) -> Iterator[ChannelAcceptResponse]:
        while (answer := self._answers.get()) is not _END:
            assert isinstance(answer, ChannelAcceptResponse)
            yield answer

    def _registrations(self) -> int:
        try:
            log = self.node.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return log.count(_REQUESTED)

    def start(self) -> None:
        """Opens the stream and returns once lnd has taken it (its log says so)."""
        before = self._registrations()
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(self.node.tls_cert_path.read_bytes()),
            grpc.metadata_call_credentials(_Macaroon(self.node.admin_macaroon_path.read_bytes())),
        )
        self._channel = grpc.secure_channel(self.node.rpcserver, credentials)
        stream = self._channel.stream_stream(
            METHOD,
            request_serializer=ChannelAcceptResponse.encode,
            response_deserializer=ChannelAcceptRequest.decode,
        )
        self._call = stream(self._outgoing())
        self._thread = threading.Thread(
            target=self._run, name=f"acceptor-{self.node.name}", daemon=True
        )
        self._thread.start()

        # grpc-go shows a client nothing of a stream until lnd sends the first request, and
        # an lnd without an acceptor refuses zero-conf opens: lnd logs each call (at debug
        # level) just before its handler adds the acceptor to its chain.
        def taken() -> bool:
            if self.error is not None:
                raise self.error
            return self._registrations() > before

        wait_for(
            f"lnd {self.node.name} to take the ChannelAcceptor stream",
            taken,
            timeout=10,
            alive=[self.node.process],
            retry_on=(),
        )

    def _run(self) -> None:
        assert self._call is not None
        try:
            for request in self._call:
                self.requests.append(request)
                self._answers.put(self.decide(request))
        except grpc.RpcError as e:
            if e.code() is not grpc.StatusCode.CANCELLED:
                self.error = e

    def stop(self) -> None:
        if self._call is not None:
            self._call.cancel()  # type: ignore[no-untyped-call]
        self._answers.put(_END)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._channel is not None:
            self._channel.close()
        self._call = self._thread = self._channel = None
