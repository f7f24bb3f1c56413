"""Text from stored data, made safe for where it is shown: a terminal, or a spreadsheet.

Stored text (knowledge-base entries, call transcripts) comes from files and callers, so it is data,
not markup: printed raw, an ESC sequence can move the cursor, recolour or clear the screen, or hide
what follows, and a CSV cell that starts with `=` is run as a formula when a spreadsheet opens it.
"""

from __future__ import annotations

import re

# C0 except tab, DEL and C1: Unicode's "Cc" category, less the one control a terminal line may hold.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r"}

# What a spreadsheet (Excel, LibreOffice, Google Sheets) reads as the start of a formula; tab and CR
# because some of them skip leading whitespace before they look (OWASP's CSV injection guidance).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def terminal_safe(text: str) -> str:
    """`text` with every control character but tab as a visible escape (`\\x1b`, `\\x00`, `\\n`).

    Newlines are escaped too: a field printed on one line should not be able to forge the next.
    """
    return _CONTROL.sub(_escape, text)


def csv_safe_cell(value: str) -> str:
    """`value`, with a leading `'` when a spreadsheet would take it for a formula."""
    return f"'{value}" if value.startswith(_FORMULA_STARTS) else value
