"""Plain-text rendering for ``mailboxctl``: aligned tables, key/value blocks, ages, sizes, times.

Pure functions over strings and numbers: no I/O, no colours, nothing that depends on the
terminal, so what a test sees is what an operator sees.
"""

from __future__ import annotations

import datetime as dt
import logging
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "format_age",
    "format_bytes",
    "format_duration",
    "format_time",
    "format_until",
    "packet_lines",
    "plural",
    "read_safe_text",
    "render_fields",
    "render_table",
    "safe_text",
    "text_width",
]

log = logging.getLogger(__name__)


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[int] = (),
    gap: int = 2,
) -> str:
    """Columns padded to their widest cell, ``right`` (column indexes) right-aligned.

    Trailing spaces are stripped from every line; the result has no final newline.
    """
    widths = [text_width(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells for {len(headers)} columns")
        widths = [max(w, text_width(cell)) for w, cell in zip(widths, row, strict=True)]
    aligned_right = set(right)
    sep = " " * gap

    def line(cells: Sequence[str]) -> str:
        padded = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            pad = " " * (w - text_width(cell))
            padded.append(pad + cell if i in aligned_right else cell + pad)
        return sep.join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def text_width(text: str) -> int:
    """The columns ``text`` takes on a terminal: wide (East Asian, most emoji) characters
    take two, combining marks none, so a table of names a peer chose stays aligned."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def safe_text(text: str) -> str:
    """Text someone else chose (a client's LSPS5 app_name), made safe to print on one line.

    Every character Unicode calls a control, format, separator (but the space), surrogate,
    private-use or unassigned one becomes an escape (``\\x1b``, ``\\u202e``,
    ``\\U000e0041``), as do a backslash (``\\\\``) and a leading or trailing space
    (``\\x20``): no name can move the cursor, colour the terminal, break a line, reorder
    what follows it (bidi overrides) or hide in blanks, and what is printed reads back to
    one name only. Letters of any script, marks and emoji are shown as they are (so
    look-alike letters of two scripts still look alike: ``--json`` tells them apart).
    """
    out = []
    last = len(text) - 1
    for i, c in enumerate(text):
        if c == "\\":
            out.append("\\\\")
        elif c == " " and (i == 0 or i == last):
            out.append("\\x20")
        elif c.isprintable():
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)


_ESCAPE_DIGITS = {"x": 2, "u": 4, "U": 8}


def read_safe_text(shown: str) -> str | None:
    """The text :func:`safe_text` printed as ``shown``, so that an operator can type a
    name as it was listed; None when ``shown`` holds a backslash no escape begins."""
    out = []
    i = 0
    while i < len(shown):
        c = shown[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        kind = shown[i + 1 : i + 2]
        if kind == "\\":
            out.append(kind)
            i += 2
            continue
        digits = _ESCAPE_DIGITS.get(kind)
        code = shown[i + 2 : i + 2 + digits] if digits else ""
        if not digits or len(code) != digits or not all(d in string.hexdigits for d in code):
            return None
        try:
            out.append(chr(int(code, 16)))
        except ValueError:  # past U+10FFFF
            return None
        i += 2 + digits
    return "".join(out)


def render_fields(fields: Sequence[tuple[str, str]], *, indent: int = 0) -> str:
    """``label  value`` lines with the values aligned; no final newline."""
    if not fields:
        return ""
    width = max(len(label) for label, _ in fields)
    pad = " " * indent
    return "\n".join(f"{pad}{label.ljust(width)}  {value}".rstrip() for label, value in fields)


def format_duration(seconds: float) -> str:
    """A short duration with its two largest units: ``45s``, ``12m 03s``, ``5h 07m``, ``2d 04h``."""
    s = max(0, int(seconds))
    days, rest = divmod(s, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_age(at: float | None, now: float) -> str:
    """How long ago ``at`` was (``"-"`` for none); a time in the future reads ``"0s"``."""
    return "-" if at is None else format_duration(now - at)


def format_until(at: float | None, now: float) -> str:
    """``in 23h 59m`` for a time to come, ``due`` once it has passed, ``-`` for none."""
    if at is None:
        return "-"
    return "due" if at <= now else f"in {format_duration(at - now)}"


def format_time(at: float | None) -> str:
    """A Unix time as ``2026-11-24 04:40:25Z`` (UTC, to the second); ``-`` for none."""
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_bytes(n: int) -> str:
    """Bytes for people: ``512 B``, ``1.3 KiB``, ``256.0 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def plural(n: int, noun: str) -> str:
    """``1 message``, ``2 messages``: the count and the noun, with an ``s`` unless one."""
    return f"{n} {noun}{'s' if n != 1 else ''}"


def packet_lines(packet: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The fields of :func:`lndmailbox.onion.inspect.packet_fields` as labelled lines."""
    version = packet.get("version", "-")
    lines = [
        ("packet version", str(version) + ("" if version == 0 else " (unknown)")),
        ("packet length", f"{packet['length']} bytes"),
    ]
    if "ephemeral_key" in packet:
        valid = "" if packet["ephemeral_key_valid"] else " (not a valid point)"
        lines.append(("ephemeral key", packet["ephemeral_key"] + valid))
    if "payloads_length" in packet:
        lines.append(("hop payloads", f"{packet['payloads_length']} bytes (encrypted)"))
        lines.append(("hmac", packet["hmac"]))
    return lines
