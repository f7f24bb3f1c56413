"""Cut a streamed answer into clauses that text-to-speech can start on.

A clause ends at . ! ? ; (followed by a space or a newline), at a newline, and at a comma once it
holds at least `min_comma_words` words. A boundary is only decided when the character after the
mark has arrived, so "4.99", "1,000" and "3.5%" are never cut, whatever way the tokens fall.
Common abbreviations ("Mr.", "e.g.", "St.") do not end a clause.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset(
    str.split(
        "mr mrs ms dr st jr sr prof inc ltd co corp vs etc e.g i.e approx dept min max "
        "mon tue wed thu fri sat sun jan feb mar apr jun jul aug sep sept oct nov dec a.m p.m"
    )
)
_ENDERS = ".!?;"
_CLOSERS = "\"')]”’"


class ClauseSplitter:
    """Feed text pieces as they stream; get back the clauses completed so far."""

    def __init__(self, min_comma_words: int = 4) -> None:
        self.min_comma_words = min_comma_words
        self._buffer = ""

    def feed(self, piece: str) -> list[str]:
        self._buffer += piece
        clauses: list[str] = []
        while (cut := self._find_cut()) is not None:
            clause, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if clause:
                clauses.append(clause)
        return clauses

    def flush(self) -> str:
        """The unfinished rest (the stream ended); "" when nothing is left."""
        rest, self._buffer = self._buffer.strip(), ""
        return rest

    def _find_cut(self) -> int | None:
        text = self._buffer
        for i, char in enumerate(text):
            if char == "\n":
                return i + 1
            if char not in _ENDERS and char != ",":
                continue
            end = i + 1
            while end < len(text) and text[end] in _CLOSERS:
                end += 1
            if end >= len(text):
                return None  # the next character decides; wait for it
            if not text[end].isspace():
                continue  # 4.99, 1,000, e.g.x
            if char == "," and _word_count(text[:i]) < self.min_comma_words:
                continue
            if char == "." and _is_abbreviation(text[:i]):
                continue
            return end
        return None


def _word_count(text: str) -> int:
    return len(text.split())


def _is_abbreviation(before: str) -> bool:
    match = re.search(r"([A-Za-z][A-Za-z.]*)$", before)
    if not match:
        return False
    word = match.group(1).lower()
    # Single letters ("J. Smith", "U.S.") are initials, not sentence ends.
    return word in _ABBREVIATIONS or len(word.replace(".", "")) == 1
