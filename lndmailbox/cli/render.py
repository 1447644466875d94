"""Plain-text rendering for ``mailboxctl``: aligned tables, key/value blocks, ages, sizes, times.

Pure functions over strings and numbers: no I/O, no colours, nothing that depends on the
terminal, so what a test sees is what an operator sees.
"""

from __future__ import annotations

import datetime as dt
import logging
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
    "render_fields",
    "render_table",
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
    widths = [len(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells for {len(headers)} columns")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    aligned_right = set(right)
    sep = " " * gap

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(w) if i in aligned_right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        return sep.join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


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
