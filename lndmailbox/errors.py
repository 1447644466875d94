"""The one error tree of lndmailbox.

    MailboxError
    ├── OnionError            bytes from a peer that are not a valid onion message
    │   └── ... (defined beside the code that detects them: onion/tlv.py, onion/reader.py)
    ├── LndError              a failed lnd RPC: gRPC code, retryable or not
    │   ├── PeerOfflineError  lnd says NOT_FOUND "peer is not connected"
    │   └── LndCredentialsError lnd refused the macaroon: expired, revoked, another node's
    │       │                 (the message names the macaroon's file and what failed)
    │       └── LndPermissionError the macaroon lacks a permission (named in the message)
    ├── StoreError            Redis failed or holds something unreadable
    │   ├── StoreUnavailableError  Redis cannot be reached right now
    │   ├── RecordError       a message the store cannot encode, or a record it cannot read
    │   └── ServerStartError  the embedded Redis server did not start (exit code 3)
    ├── LspsError             an LSPS request from a peer that cannot be served: its
    │                         JSON-RPC error code and message (lndmailbox/lsps/)
    ├── WebhookError          one POST of an LSPS5 notification that failed: its reason
    ├── ConfigError           settings that cannot work (exit code 2)
    ├── NodeLockLostError     another daemon took this node's lock: this one steps down
    ├── MigrationRefusedError a mailbox cannot be moved now (a daemon of the old release
    │                         runs on it, a daemon runs on either side of a copy, or the
    │                         copy's destination holds that node's mailbox already)
    ├── CtlError              mailboxctl cannot do what it was asked (exit 1)
    │   └── NodeUnknownError  ... nor tell which node's mailbox to open
    └── UsageError            a mailboxctl argument found wrong after parsing (exit 2)
                              (these three: lndmailbox/cli/errors.py, beside their only user)

Every error raised from another library's exception keeps it as ``__cause__``.
"""

from __future__ import annotations


class MailboxError(Exception):
    """Root of every error lndmailbox raises on purpose."""


class OnionError(MailboxError):
    """An onion message that must be dropped.

    ``reason`` is a short stable label (snake_case) used in metrics, logs and events.
    """

    reason: str = "malformed"


class LndError(MailboxError):
    """An lnd RPC failed.

    ``code`` is the gRPC status name (``"UNAVAILABLE"``...), ``rpc`` the method name,
    ``retryable`` whether trying again later can help.
    """

    def __init__(self, message: str, *, rpc: str, code: str, retryable: bool) -> None:
        super().__init__(message)
        self.rpc = rpc
        self.code = code
        self.retryable = retryable


class PeerOfflineError(LndError):
    """lnd could not send because the peer is not connected: keep the message for later."""


class LndCredentialsError(LndError):
    """lnd refused the macaroon itself (expired, revoked, not this node's, unreadable), or
    (:class:`LndPermissionError`) what it allows. No retry mends it and it is no fault of
    a message: the daemon stops with it, leaving undecided messages journaled."""


class LndPermissionError(LndCredentialsError):
    """The macaroon does not allow an RPC; the message names the permission it needs."""


class StoreError(MailboxError):
    """Redis failed, or holds a value the store cannot read."""


class StoreUnavailableError(StoreError):
    """Redis cannot be reached right now; the operation may succeed later."""


class RecordError(StoreError):
    """A message the store refuses to encode, or a stored record it cannot decode."""


class ServerStartError(StoreError):
    """The embedded Redis server could not be started (no binary, a full disk, too slow).

    Not a settings problem: the daemon exits 3, so a supervisor can tell it from exit 2.
    """


class LspsError(MailboxError):
    """A peer's LSPS request that cannot be served (bLIP-50): answered with ``code`` and
    the error's text as its JSON-RPC error, to ``request_id`` (None: the request had no
    usable id, answered with ``"id": null``)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        request_id: str | None = None,
        data: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.data = data


class WebhookError(MailboxError):
    """One attempt to POST an LSPS5 notification to a client's webhook that failed.

    ``reason`` is a short stable label for metrics and logs: ``status`` (an answer other
    than 200), ``redirect`` (a 3xx: never followed), ``timeout``, ``connect``, ``tls``,
    ``private_address`` (the host resolves to an address that is not globally routable),
    ``sign`` (lnd did not sign it). ``retryable``: whether a later attempt can help. The
    message never holds the URL, which carries the phone's push token: at most its
    :func:`~lndmailbox.lsps.webhook_url.webhook_label`.
    """

    def __init__(self, message: str, *, reason: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


class ConfigError(MailboxError):
    """Settings that cannot work (bad value, missing file, conflicting options)."""


class NodeLockLostError(MailboxError):
    """Another daemon holds this node's lock: two must never lead one node, so this one
    steps down and stands by (``owner`` is the other one's token)."""

    def __init__(self, owner: str | None) -> None:
        super().__init__(f"lost the node lock to another daemon ({owner or 'owner unknown'})")
        self.owner = owner


class MigrationRefusedError(MailboxError):
    """A mailbox cannot be moved now: moving it would race a daemon that writes it (one of
    the old release, on the old key layout), or overwrite a mailbox already there. The
    message says which; trying again once that is over succeeds."""
