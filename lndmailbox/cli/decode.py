"""``mailboxctl decode HEX|-``: what an onion_message shows without the recipient's key.

The reading itself is :mod:`lndmailbox.onion.inspect`; this module takes the hex (or
stdin) and shows the result.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lndmailbox.cli.errors import CtlError
from lndmailbox.cli.output import emit_json
from lndmailbox.cli.parser import parse_hex
from lndmailbox.cli.render import packet_lines, render_fields
from lndmailbox.cli.session import Session
from lndmailbox.errors import OnionError
from lndmailbox.onion.inspect import packet_fields, parse_onion_message
from lndmailbox.onion.wire import ONION_MESSAGE_TYPE

__all__ = ["run_decode"]

log = logging.getLogger(__name__)


async def run_decode(s: Session, args: argparse.Namespace) -> int:
    """Needs neither lnd nor Redis; exit 1 for bytes that are not an onion_message."""
    text: str = args.hex
    data = parse_hex(sys.stdin.read() if text == "-" else text)
    try:
        decoded = parse_onion_message(data)
    except OnionError as e:
        raise CtlError(f"not an onion_message: {e}") from e
    msg = decoded.message
    packet = packet_fields(msg.onion)
    if args.json:
        emit_json(
            {
                "type": ONION_MESSAGE_TYPE if decoded.typed else None,
                "path_key": msg.path_key.hex(),
                "packet": packet,
                "extension_length": len(decoded.extension),
                "size": len(msg.path_key) + len(msg.onion),
            }
        )
        return 0
    typed = f"{ONION_MESSAGE_TYPE} (onion_message)" if decoded.typed else "none given (body only)"
    fields = [
        ("type", typed),
        ("path key", msg.path_key.hex()),
        *packet_lines(packet),
        ("extension TLVs", f"{len(decoded.extension)} bytes" if decoded.extension else "none"),
    ]
    print(render_fields(fields))
    return 0
