"""The plain-text rendering mailboxctl prints: tables, fields, durations, sizes, times."""

from __future__ import annotations

import random

import pytest

from lndmailbox.cli.render import (
    format_age,
    format_bytes,
    format_duration,
    format_time,
    format_until,
    read_safe_text,
    render_fields,
    render_table,
    safe_text,
    text_width,
)


def test_render_table_pads_columns_and_aligns_numbers_right() -> None:
    text = render_table(
        ["PEER", "MSGS", "NOTE"],
        [["02aa", "3", "x"], ["03bbbbbb", "120", ""]],
        right=(1,),
    )
    assert text.splitlines() == [
        "PEER      MSGS  NOTE",
        "02aa         3  x",
        "03bbbbbb   120",
    ]


def test_render_table_refuses_ragged_rows() -> None:
    with pytest.raises(ValueError, match="row has 1 cells for 2 columns"):
        render_table(["A", "B"], [["1"]])


def test_render_table_with_no_rows_is_the_header() -> None:
    assert render_table(["A", "BB"], []) == "A  BB"


def test_render_fields_aligns_values() -> None:
    assert render_fields([("node", "02aa"), ("peers with mail", "2"), ("x", "")], indent=2) == (
        "  node             02aa\n  peers with mail  2\n  x"
    )
    assert render_fields([]) == ""


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (59.9, "59s"),
        (60, "1m 00s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (86_399, "23h 59m"),
        (86_400, "1d 00h"),
        (3 * 86_400 + 5 * 3600 + 59, "3d 05h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_ages_and_deadlines() -> None:
    assert format_age(None, 100.0) == "-"
    assert format_age(40.0, 100.0) == "1m 00s"
    assert format_until(None, 100.0) == "-"
    assert format_until(100.0, 100.0) == "due"
    assert format_until(190.0, 100.0) == "in 1m 30s"


def test_format_time_is_utc() -> None:
    assert format_time(1_700_000_000.9) == "2023-11-14 22:13:20Z"
    assert format_time(None) == "-"


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1399 * 3, "4.1 KiB"),
        (256 * 1024**2, "256.0 MiB"),
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**5, "3072.0 TiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_safe_text_escapes_what_a_terminal_would_act_on_and_keeps_letters() -> None:
    assert safe_text("phone") == "phone"
    assert safe_text("Ünïcødé 日本 🚀 e\u0301") == "Ünïcødé 日本 🚀 e\u0301"
    assert safe_text("a\x1b[2Jb\r\n\x00\x7f") == "a\\x1b[2Jb\\x0d\\x0a\\x00\\x7f"
    assert safe_text("\u202eexe.gpj\u200b\u00a0\u2028") == "\\u202eexe.gpj\\u200b\\xa0\\u2028"
    assert safe_text("\U000e0041\ue000\udcff") == "\\U000e0041\\ue000\\udcff"
    assert safe_text(" a b ") == "\\x20a b\\x20"
    assert safe_text("x\\x41") == "x\\\\x41"


def test_read_safe_text_reads_back_what_safe_text_printed(rng: random.Random) -> None:
    pool = "a é日🚀\\\x1b\n\u202e\u0301\ue000\U000e0041x0u"
    for _ in range(2000):
        text = "".join(rng.choice(pool) for _ in range(rng.randrange(12)))
        shown = safe_text(text)
        assert shown.isprintable(), repr(text)
        assert read_safe_text(shown) == text, repr(text)
    for bad in ("a\\", "\\q", "\\x4", "\\u12g4", "\\U00110000"):
        assert read_safe_text(bad) is None, bad


def test_tables_align_wide_and_combining_characters_by_their_columns() -> None:
    assert [text_width(t) for t in ("abc", "日本", "e\u0301", "🚀")] == [3, 4, 1, 2]
    text = render_table(["APP", "N"], [["日本", "1"], ["e\u0301e", "2"]])
    assert text.splitlines() == ["APP   N", "日本  1", "e\u0301e    2"]
