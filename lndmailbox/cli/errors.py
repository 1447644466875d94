"""The errors of ``mailboxctl`` itself, in the package's one tree (:mod:`lndmailbox.errors`).

MailboxError
├── CtlError              a command that cannot do what it was asked (exit 1)
│   └── NodeUnknownError  no --node, lnd unreachable, Redis names no single mailbox
└── UsageError            an argument found wrong after parsing (exit 2)
"""

from __future__ import annotations

import logging

from lndmailbox.errors import MailboxError

__all__ = ["CtlError", "NodeUnknownError", "UsageError"]

log = logging.getLogger(__name__)


class CtlError(MailboxError):
    """A command that cannot do what it was asked (exit 1)."""


class NodeUnknownError(CtlError):
    """lnd is unreachable, no --node was given, and Redis does not point at one mailbox."""

    def __init__(self, lnd_error: MailboxError, redis_answer: str) -> None:
        super().__init__(
            f"cannot tell which node's mailbox to open: lnd is unreachable ({lnd_error}) and "
            f"{redis_answer}; pass --node PUBKEY"
        )
        self.redis_answer = redis_answer
        """What Redis said instead of one node: none, several (named), or no answer."""


class UsageError(MailboxError):
    """An argument found wrong after parsing, e.g. hex read from stdin (exit 2)."""
