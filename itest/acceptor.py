"""lnd's ChannelAcceptor, driven by the itest: the accepting side of zero-conf channel opens.

An lnd run with ``--protocol.zero-conf`` accepts a zero-conf channel only when a ChannelAcceptor
client answers ``accept=true, zero_conf=true, min_accept_depth=0`` (lnd's own ChannelAcceptor
chain: ``rpcserver.go`` ``rpcServer.ChannelAcceptor``, ``chanacceptor/rpcacceptor.go``). The
RPC is a bidirectional stream in which lnd sends the *requests* (``ChannelAcceptRequest``) and
the client the *responses* (``ChannelAcceptResponse``).

The product's trimmed stubs (``lndmailbox/lnd/lnrpc``) leave this RPC out, and the itest must
not add it there. The two messages are small, so they are encoded here by hand (protobuf wire
format: varints and length-delimited fields) from their definitions in lnd's
``lnrpc/lightning.proto`` (v0.21.3-beta), and the stream is called by its method path.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from itest.lndnode import LndNode
from itest.process import wait_for
from itest.rpc import _Macaroon

METHOD = "/lnrpc.Lightning/ChannelAcceptor"

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _put_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _get_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of every field: an int for varints and fixed, bytes for LEN."""
    at = 0
    while at < len(data):
        key, at = _get_varint(data, at)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == _VARINT:
            value, at = _get_varint(data, at)
        elif wire_type == _LEN:
            length, at = _get_varint(data, at)
            value, at = data[at : at + length], at + length
        elif wire_type in (_FIXED64, _FIXED32):
            size = 8 if wire_type == _FIXED64 else 4
            value, at = int.from_bytes(data[at : at + size], "little"), at + size
        else:
            raise ValueError(f"unsupported wire type {wire_type} of field {number}")
        yield number, value


@dataclass(frozen=True)
class ChannelAcceptRequest:
    """The fields of lnrpc.ChannelAcceptRequest the itest reads (numbers as in lightning.proto)."""

    node_pubkey: bytes = b""  # 1
    pending_chan_id: bytes = b""  # 3
    funding_amt: int = 0  # 4
    channel_flags: int = 0  # 13
    commitment_type: int = 0  # 14 (lnrpc.CommitmentType: 4 = ANCHORS)
    wants_zero_conf: bool = False  # 15
    wants_scid_alias: bool = False  # 16

    @classmethod
    def decode(cls, data: bytes) -> ChannelAcceptRequest:
        seen: dict[int, int | bytes] = dict(_fields(data))

        def raw(number: int) -> bytes:
            value = seen.get(number, b"")
            return value if isinstance(value, bytes) else b""

        def num(number: int) -> int:
            value = seen.get(number, 0)
            return value if isinstance(value, int) else 0

        return cls(
            node_pubkey=raw(1),
            pending_chan_id=raw(3),
            funding_amt=num(4),
            channel_flags=num(13),
            commitment_type=num(14),
            wants_zero_conf=bool(num(15)),
            wants_scid_alias=bool(num(16)),
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
        out = bytearray()

        def varint(number: int, value: int) -> None:
            if value:
                _put_varint(out, number << 3 | _VARINT)
                _put_varint(out, value)

        def blob(number: int, value: bytes) -> None:
            if value:
                _put_varint(out, number << 3 | _LEN)
                _put_varint(out, len(value))
                out.extend(value)

        varint(1, int(self.accept))
        blob(2, self.pending_chan_id)
        blob(3, self.error.encode())
        varint(10, self.min_accept_depth)
        varint(11, int(self.zero_conf))
        return bytes(out)


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
