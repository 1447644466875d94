"""``python -m lndmailbox.cli``: the same as the ``mailboxctl`` command."""

from __future__ import annotations

from lndmailbox.cli.app import main

raise SystemExit(main())
