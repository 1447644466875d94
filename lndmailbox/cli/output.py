"""Where ``mailboxctl`` writes: the result on stdout (text or JSON), notes and errors on stderr.

stdout holds only the output, even with ``--json``, so a script can read it whole.
"""

from __future__ import annotations

import json
import logging
import sys

from lndmailbox.logs import scrub_text

__all__ = ["PROG", "emit_json", "json_time", "say"]

log = logging.getLogger(__name__)

PROG = "mailboxctl"


def emit_json(value: object) -> None:
    """One JSON document on stdout, indented for people who read it too."""
    print(json.dumps(value, indent=2))


def say(message: str) -> None:
    """One line on stderr, ``mailboxctl: ...``, with secrets scrubbed (an error or a note)."""
    print(f"{PROG}: {scrub_text(message)}", file=sys.stderr)


def json_time(value: float | None) -> float | None:
    """A time (or an age) in JSON: Unix seconds to the millisecond the store keeps."""
    return None if value is None else round(value, 3)
