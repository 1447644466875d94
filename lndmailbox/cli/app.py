"""``mailboxctl``'s entry point: parse, read the settings, run one command, map errors to
exit codes.

Exit codes: 0 ok, 1 error (Redis unreachable, nothing to act on, refused...), 2 usage (bad
arguments or settings), 130 interrupted. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from lndmailbox.cli.allow import run_allow
from lndmailbox.cli.decode import run_decode
from lndmailbox.cli.errors import UsageError
from lndmailbox.cli.events import run_events
from lndmailbox.cli.mail import run_deliver, run_purge, run_show
from lndmailbox.cli.migrate import run_migrate
from lndmailbox.cli.output import say
from lndmailbox.cli.parser import build_parser
from lndmailbox.cli.peers import run_peers
from lndmailbox.cli.session import Handler, Session
from lndmailbox.cli.status import run_status
from lndmailbox.cli.webhooks import run_webhooks
from lndmailbox.config import Settings, settings_from_args
from lndmailbox.errors import ConfigError, MailboxError, StoreUnavailableError

__all__ = ["COMMANDS", "main"]

log = logging.getLogger(__name__)

COMMANDS: dict[str, Handler] = {
    "status": run_status,
    "peers": run_peers,
    "show": run_show,
    "allow": run_allow,
    "purge": run_purge,
    "deliver": run_deliver,
    "decode": run_decode,
    "events": run_events,
    "migrate": run_migrate,
    "webhooks": run_webhooks,
}
"""Each command of the parser, by name, and the function that runs it."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``mailboxctl`` with ``argv`` (default: the process's) and returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        settings = settings_from_args(args)
    except ConfigError as e:
        say(f"bad settings: {e}")
        return 2
    try:
        return asyncio.run(_run(COMMANDS[args.command], settings, args))
    except UsageError as e:
        say(f"{args.command}: {e}")
        return 2
    except ConfigError as e:
        say(str(e))
        return 2
    except MailboxError as e:
        say(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (| head): not an error; keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _run(handler: Handler, settings: Settings, args: argparse.Namespace) -> int:
    async with Session(settings, node=args.node) as session:
        try:
            return await handler(session, args)
        except StoreUnavailableError as e:
            raise StoreUnavailableError(session.redis_hint(e)) from e
