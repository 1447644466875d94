"""lnd's failures as one :class:`~lndmailbox.errors.LndError`, retryable or not.

lnd reports most failures as status UNKNOWN with a Go error text, so :func:`rpc_error`
reads both the code and the text:

* UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, a server-side CANCELLED, and lnd's own
  "starting / shutting down / wallet locked" texts: ``retryable=True``.
* PERMISSION_DENIED and lnd's "permission denied":
  :class:`~lndmailbox.errors.LndPermissionError` naming the RPC, the macaroon and the
  permission it needs (``SendOnionMessage needs offchain:write``, from
  :data:`PERMISSIONS`). Never retried.
* UNAUTHENTICATED and lnd's other macaroon texts (``caveat "time-before ..." not
  satisfied: macaroon has expired``, ``verification failed: signature mismatch after
  caveat verification``, ``cannot get macaroon: root key with id 0 doesn't exist`` after
  ``lncli revokemacaroonkey``, ``expected 1 macaroon, got 0``, ``unmarshal v2: ...``):
  :class:`~lndmailbox.errors.LndCredentialsError` naming the macaroon and saying what
  failed (:func:`credentials_failure`). Never retried. lnd checks the macaroon when a
  call starts, so a stream opened before the macaroon expired goes on working; the next
  unary call or resubscription fails.
* a TLS handshake that failed verification (another certificate, or one that does not
  name the host): ``retryable=False``, with a hint.
* NOT_FOUND "peer is not connected" (and "peer ... disconnected" while lnd waited for the
  peer): :class:`~lndmailbox.errors.PeerOfflineError`.
* UNIMPLEMENTED: ``retryable=False``, saying what this lnd lacks.
* everything else: ``retryable=False``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import grpc
import grpc.aio

from lndmailbox.errors import (
    LndCredentialsError,
    LndError,
    LndPermissionError,
    PeerOfflineError,
)

__all__ = ["PERMISSIONS", "credentials_failure", "rpc_error"]

#: Every RPC the mailbox calls -> (gRPC method path, the macaroon permission lnd requires),
#: as in lnd's permission maps (rpcserver.go, lnrpc/signrpc/signer_server.go).
PERMISSIONS: Final[Mapping[str, tuple[str, str]]] = {
    "GetInfo": ("/lnrpc.Lightning/GetInfo", "info:read"),
    "ListPeers": ("/lnrpc.Lightning/ListPeers", "peers:read"),
    "SubscribePeerEvents": ("/lnrpc.Lightning/SubscribePeerEvents", "peers:read"),
    "ListChannels": ("/lnrpc.Lightning/ListChannels", "offchain:read"),
    "ListAliases": ("/lnrpc.Lightning/ListAliases", "offchain:read"),
    "SubscribeCustomMessages": ("/lnrpc.Lightning/SubscribeCustomMessages", "offchain:read"),
    "SendCustomMessage": ("/lnrpc.Lightning/SendCustomMessage", "offchain:write"),
    "SubscribeOnionMessages": ("/lnrpc.Lightning/SubscribeOnionMessages", "offchain:read"),
    "SendOnionMessage": ("/lnrpc.Lightning/SendOnionMessage", "offchain:write"),
    "DeriveSharedKey": ("/signrpc.Signer/DeriveSharedKey", "signer:generate"),
    # LSPS5's notifications are signed by the node key; optional (docs/lnd.md).
    "SignMessage": ("/lnrpc.Lightning/SignMessage", "message:write"),
}

_RETRYABLE_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        # Only ever from the server or the transport: our own cancellation raises
        # asyncio.CancelledError instead.
        grpc.StatusCode.CANCELLED,
    }
)

# lnd's error texts (status UNKNOWN) while it starts, stops, or waits for its wallet.
_LND_TRANSIENT: Final = re.compile(
    r"^(shutdown$|server is shutting down|server exiting|waiting to start"
    r"|wallet locked|wallet not created|the RPC server is in the process of starting"
    r"|unable to determine macaroon permissions)"
)

# lnd's macaroon check failures (status UNKNOWN): rpcperms/interceptor.go, macaroons/.
_LND_MACAROON: Final = re.compile(
    r"(permission denied|verification failed|expected 1 macaroon|macaroon"
    r"|invalid ID$|cannot get macaroon|encoding/hex|not satisfied|unmarshal v[12]:)",
    re.IGNORECASE,
)

# What lnd's texts say failed, first match wins (the macaroon named by the caller).
_CREDENTIAL_FAILURES: Final = (
    (re.compile(r"expired", re.I), "it has expired (its time-before caveat has passed)"),
    (
        re.compile(r"root key with id|cannot get macaroon", re.I),
        "its root key is gone from lnd (revoked with `lncli revokemacaroonkey`, or the "
        "macaroon is another lnd's)",
    ),
    (
        re.compile(r"signature mismatch|verification failed", re.I),
        "its signature does not verify (a macaroon of another lnd, or altered)",
    ),
    (re.compile(r"not satisfied", re.I), "one of its caveats does not hold"),
    (re.compile(r"expected 1 macaroon", re.I), "lnd received no macaroon"),
    (
        re.compile(r"unmarshal|data format|macaroon version|invalid ID|encoding/hex", re.I),
        "lnd cannot read it as a macaroon",
    ),
)

# The connection failed because lnd's certificate is not the pinned one or does not name the
# host: retrying cannot help.
_TLS_MISMATCH: Final = re.compile(
    r"CERTIFICATE_VERIFY_FAILED|is not in peer certificate|Hostname Verification Check failed"
)

_PEER_OFFLINE: Final = re.compile(r"^(peer is not connected|peer [0-9a-f]{66} disconnected)")


def rpc_error(rpc: str, error: grpc.aio.AioRpcError, *, macaroon: str = "the macaroon") -> LndError:
    """One :class:`LndError` (or subclass) for a failed call of ``rpc`` (``"GetInfo"``...);
    ``macaroon`` names where the macaroon came from (its file), for credential failures."""
    code = error.code()
    details = error.details() or ""
    name = code.name
    if code is grpc.StatusCode.UNKNOWN and _LND_TRANSIENT.match(details):
        return LndError(f"{rpc} failed: {name}: {details}", rpc=rpc, code=name, retryable=True)
    if code is grpc.StatusCode.PERMISSION_DENIED or (
        code is grpc.StatusCode.UNKNOWN and details.strip() == "permission denied"
    ):
        return LndPermissionError(
            _permission_message(rpc, details, macaroon), rpc=rpc, code=name, retryable=False
        )
    if code is grpc.StatusCode.UNAUTHENTICATED or (
        code is grpc.StatusCode.UNKNOWN and _LND_MACAROON.search(details)
    ):
        return LndCredentialsError(
            credentials_failure(rpc, details, macaroon), rpc=rpc, code=name, retryable=False
        )
    if _PEER_OFFLINE.match(details) and code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNKNOWN,
    ):
        return PeerOfflineError(f"{rpc}: {details}", rpc=rpc, code=name, retryable=False)
    if code is grpc.StatusCode.UNAVAILABLE and _TLS_MISMATCH.search(details):
        return LndError(
            f"{rpc}: lnd's TLS certificate is not the one configured ({details}); point "
            "--tlscertpath at lnd's current tls.cert, and make sure the certificate names the "
            "host in --rpcserver (lnd.conf tlsextradomain / tlsextraip)",
            rpc=rpc,
            code=name,
            retryable=False,
        )
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return LndError(_unimplemented_message(rpc, details), rpc=rpc, code=name, retryable=False)
    retryable = code in _RETRYABLE_CODES
    message = f"{rpc} failed: {name}: {details}"
    if code is grpc.StatusCode.UNKNOWN and "not in custom range" in details:
        message += " (start lnd <= 0.20 with protocol.custom-message=513)"
    return LndError(message, rpc=rpc, code=name, retryable=retryable)


def _permission_message(rpc: str, details: str, macaroon: str) -> str:
    uri, permission = PERMISSIONS.get(rpc, (f"/{rpc}", "?"))
    return (
        f"{rpc} needs {permission}: {macaroon} does not allow it; lnd said {details!r}. "
        f"Bake a macaroon with {permission} (or uri:{uri}); see docs/lnd.md"
    )


def credentials_failure(rpc: str, details: str, macaroon: str = "the macaroon") -> str:
    """What to tell the operator when lnd refused ``macaroon`` on ``rpc`` saying ``details``."""
    why = next(
        (text for pattern, text in _CREDENTIAL_FAILURES if pattern.search(details)),
        "lnd refused it",
    )
    return (
        f"lnd refused {macaroon} on {rpc}: {why}; lnd said {details!r}. Give the mailbox a "
        "macaroon this lnd accepts (see docs/lnd.md) and start it again"
    )


def _unimplemented_message(rpc: str, details: str) -> str:
    if rpc in ("SubscribeOnionMessages", "SendOnionMessage"):
        hint = "lnd < 0.21 has no onion message RPCs: use --transport custom"
    elif rpc == "DeriveSharedKey":
        hint = "this lnd has no Signer service: build lnd with the signrpc tag"
    else:
        hint = "this lnd does not offer it"
    return f"{rpc} is not implemented by lnd ({details}): {hint}"
