"""Text from stored data made safe for a terminal and for a spreadsheet (voicebot.textsafe)."""

from __future__ import annotations

import pytest

from voicebot.textsafe import csv_safe_cell, terminal_safe


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ümlauts and 日本語", "plain text, ümlauts and 日本語"),
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),  # clear screen, recolour
        ("NUL\x00here", "NUL\\x00here"),
        ("bell\x07 and backspace\x08", "bell\\x07 and backspace\\x08"),
        ("\x1b]8;;http://evil.example\x1b\\link", "\\x1b]8;;http://evil.example\\x1b\\link"),  # OSC 8
        ("DEL\x7f", "DEL\\x7f"),
        ("C1 CSI\x9b2J and NEL\x85", "C1 CSI\\x9b2J and NEL\\x85"),
        ("one\ntwo\rthree", "one\\ntwo\\rthree"),  # a field cannot forge the next line, or overwrite this one
        ("tab\tstays", "tab\tstays"),
        ("\xa0no-break space is text", "\xa0no-break space is text"),
    ],
)
def test_terminal_safe_escapes_control_characters(text: str, shown: str) -> None:
    assert terminal_safe(text) == shown


def test_terminal_safe_leaves_no_control_character() -> None:
    every = "".join(map(chr, range(0x00, 0xA0)))
    escaped = terminal_safe(every)
    assert all(char == "\t" or not (ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F) for char in escaped)


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("How much is it? =5", "How much is it? =5"),  # only the first character counts
        ("", ""),
        ("'already quoted", "'already quoted"),
    ],
)
def test_csv_safe_cell_neutralises_formulas(cell: str, safe: str) -> None:
    assert csv_safe_cell(cell) == safe
