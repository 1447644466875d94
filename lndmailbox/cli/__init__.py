"""``mailboxctl``: look at and steer what the mailbox holds.

A thin layer over :class:`~lndmailbox.store.Store` (and lnd, only where lnd must be asked:
the node's own identity and which peers are online). It reads the daemon's connection
settings (same flags, ``LNDMAILBOX_*`` environment variables and config file), so it
finds the same Redis and the same lnd without being told twice. It never imports the
daemon.

    app       main(argv) -> exit code: parse, settings, run one command, errors to codes
    parser    the command line and the checks on its arguments
    session   the connections a command needs (lnd, the node's store) and which node
    status    ``status`` as typed values, shown as text or JSON
    peers     ``peers``
    mail      ``show``, ``purge``, ``deliver``: one peer's queued mail
    allow     ``allow add|remove|list``
    events    ``events``: the event stream, and ``--follow``
    webhooks  ``webhooks list|remove``: the clients' LSPS5 webhooks, never their URLs
    migrate   ``migrate``: from the old key layout, or ``--to`` another Redis
    decode    ``decode``: an onion_message from hex (the reading is lndmailbox.onion.inspect)
    render    plain-text tables, fields, ages, sizes, times (pure)
    output    stdout for results (text or JSON), stderr for notes and errors
    errors    CtlError, NodeUnknownError, UsageError
"""

from __future__ import annotations

from lndmailbox.cli.app import main

__all__ = ["main"]
