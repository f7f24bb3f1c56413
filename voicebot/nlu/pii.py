"""PII redaction for stored transcripts, logs and exports.

The live dialogue may use a caller's numbers; what is written down must not hold them in clear.
`Redactor.redact` replaces each finding with a marker: "[phone]", "[card]", "[email]", "[ssn]",
"[account]". Patterns (each can be switched off, see `parse_patterns`):

- phone: +international (8-15 digits), NANP (10 digits, or 11 with a leading 1), national numbers
  with a leading 0, and 7+ digits after "phone"/"call me on"/"my number is"...
- card: 13-19 digits passing the Luhn check, written or spoken, in any grouping. A long number
  that fails Luhn is not a card (it may still be an account number by its keyword). After an
  explicit "card number", 12-19 digits are masked even without Luhn: a misheard digit must not put
  the other fifteen in the clear.
- email: written addresses, and the way ASR writes spoken ones ("john dot smith at example dot com").
- ssn: US SSN written 123-45-6789 / 123 45 6789 (valid area/group/serial), UK National Insurance
  numbers (QQ 12 34 56 C, with the HMRC prefix rules), and 4+ digits after "social security",
  "SSN", "national insurance", "passport" (the last four of an SSN are still an identifier).
- account: IBANs anywhere (mod-97 checked), and 4+ digits after "account"/"acct"/"customer
  number"/"policy".

Numbers announced as order or reference numbers ("order number 45712", "ticket 5551234567") are
never masked; neither are prices, quantities, times and other short numbers.
Number recognition (digit words, "double seven", spacing) is shared with voicebot.nlu.slots.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from voicebot.config import PII_PATTERNS as PATTERNS
from voicebot.nlu.slots import (
    DigitRun,
    context_of,
    find_ibans,
    looks_like_phone,
    luhn_ok,
    prefix_part,
    run_parts,
)

UNNAMED_LONG_DIGITS = 12

_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,24}\b")
_TLDS = (
    "com|org|net|edu|gov|mil|info|biz|io|co|uk|us|ca|au|nz|ie|de|fr|es|it|nl|be|ch|at|se|no|dk|fi|"
    "pl|pt|in|jp|cn|br|mx|me|ai|app|dev|tv|eu"
)
_SPOKEN_SEP = r"(?:\.|dot|underscore|_|dash|hyphen|-|plus|\+)"
# Repetitions are bounded (as addresses are) so a long line of "x dot y dot ..." stays linear.
_SPOKEN_EMAIL_RE = re.compile(
    rf"(?i)(?<![\w'’])[a-z0-9]{{1,64}}(?:\s*{_SPOKEN_SEP}\s*[a-z0-9]{{1,64}}){{0,6}}"
    rf"\s*(?:@|\bat\b)\s*"
    rf"[a-z0-9-]{{1,63}}(?:\s*(?:\.|\bdot\b)\s*[a-z0-9-]{{1,63}}){{0,4}}\s*(?:\.|\bdot\b)\s*(?:{_TLDS})\b"
)
# UK National Insurance number: HMRC never issues D, F, I, Q, U, V as either prefix letter, O as the
# second, nor the prefixes BG, GB, KN, NK, NT, TN, ZZ; the suffix is A-D.
_UK_NINO_RE = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r"\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D](?![A-Za-z0-9])"
)
# US SSN by its written shape; the SSA never issues area 000, 666 or 9xx, group 00 or serial 0000.
_SSN_SHAPE_RE = re.compile(r"(?!000|666|9)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}")

_KEPT = ("order", "reference")  # numbers announced as these are never masked
MIN_KEYWORD_DIGITS = 4  # "account ending 1234" / "last four of my social"
CARD_LENGTHS = range(13, 20)
CARD_KEYWORD_LENGTHS = range(12, 20)
PHONE_KEYWORD_LENGTHS = range(7, 16)


class Redactor:
    """Masks PII in text. Thread-safe and stateless after construction."""

    def __init__(self, patterns: Iterable[str] = PATTERNS) -> None:
        self.patterns = frozenset(patterns)
        unknown = self.patterns - set(PATTERNS)
        if unknown:
            raise ValueError(f"unknown PII pattern(s): {', '.join(sorted(unknown))}")

    @property
    def enabled(self) -> bool:
        return bool(self.patterns)

    def redact(self, text: str) -> str:
        if not text or not self.patterns:
            return text
        if "email" in self.patterns:
            text = _EMAIL_RE.sub("[email]", text)
            text = _SPOKEN_EMAIL_RE.sub("[email]", text)
        if "account" in self.patterns:
            text = _replace(text, [(a, b, "account") for a, b, _iban in find_ibans(text)])
        if "ssn" in self.patterns:
            text = _UK_NINO_RE.sub("[ssn]", text)
        return _replace(text, self._number_findings(text))

    def redact_obj(self, obj: Any) -> Any:
        """`obj` with every string inside (dicts, lists, tuples) redacted; other values as they are.

        A value under a key that names its kind ("phone_number", "account_number", "email", ...) is
        masked whole when it holds digits (or an @), since a bare "12345678" carries no keyword of its own.
        """
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {key: self._redact_value(key, value) for key, value in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(self.redact_obj(item) for item in obj)
        return obj

    def _redact_value(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and isinstance(value, str):
            kind = _kind_of_key(key)
            if kind in self.patterns and _looks_sensitive(kind, value):
                return f"[{kind}]"
        return self.redact_obj(value)

    def _number_findings(self, text: str) -> list[tuple[int, int, str]]:
        findings: list[tuple[int, int, str]] = []
        for whole, parts in run_parts(text):
            label = self._classify(text, whole) if len(parts) > 1 else None
            if label:  # "555, 123, 4567": the pauses were inside one number
                findings.append((*_span(text, whole), label))
                continue
            part_findings = [self._part_finding(text, part) for part in parts]
            if any(part_findings):
                findings += [f for f in part_findings if f]
            elif self._unnamed_long(text, whole):
                findings.append((*_span(text, whole), "account"))
        return findings

    def _part_finding(self, text: str, part: DigitRun) -> tuple[int, int, str] | None:
        label = self._classify(text, part)
        if label:
            return (*_span(text, part), label)
        card = _card_before_extras(text, part)
        if card and "card" in self.patterns:
            return (*_span(text, card), "card")
        return None

    def _unnamed_long(self, text: str, run: DigitRun) -> bool:
        """A long number nobody named: most likely a card or account number the ASR misheard by a
        digit (so Luhn fails). Too long for a quantity; masked rather than stored in clear."""
        if "account" not in self.patterns or len(run.digits) < UNNAMED_LONG_DIGITS:
            return False
        return context_of(text, run.start) not in _KEPT

    def _classify(self, text: str, run: DigitRun) -> str | None:
        label = _label(text, run)
        return label if label in self.patterns else None


def _label(text: str, run: DigitRun) -> str | None:
    """What a number is, from the words before it and then its shape; None when it is not PII."""
    digits, kind = run.digits, context_of(text, run.start)
    if kind in _KEPT:
        return None  # the caller said what it is: an identifier the transcript needs
    if kind in ("account", "ssn") and len(digits) >= MIN_KEYWORD_DIGITS:
        return kind
    if kind == "card" and len(digits) in CARD_KEYWORD_LENGTHS:
        return "card"
    if kind == "phone" and len(digits) in PHONE_KEYWORD_LENGTHS:
        return "phone"
    if len(digits) in CARD_LENGTHS and luhn_ok(digits):
        return "card"
    if looks_like_phone(run):
        return "phone"
    if _SSN_SHAPE_RE.fullmatch(text[run.start : run.end]):
        return "ssn"
    return None


def _card_before_extras(text: str, run: DigitRun) -> DigitRun | None:
    """A 4-4-4-4 card followed by its security code (3 digits) or expiry (MM YY), read as one run.

    Only this layout is split: searching any long number for a Luhn-valid piece would find one
    in about one number in ten.
    """
    lengths = [len(t) for t in run.tokens]
    if lengths[:4] != [4, 4, 4, 4] or lengths[4:] not in ([3], [2, 2]):
        return None
    card = prefix_part(text, run, 4)
    return card if card and luhn_ok(card.digits) and context_of(text, run.start) not in _KEPT else None


def _span(text: str, run: DigitRun) -> tuple[int, int]:
    start = run.start
    # "(555) 123-4567": take the opening parenthesis too, so no stray "(" is left before the marker.
    if start > 0 and text[start - 1] == "(" and ")" in text[start : run.end]:
        start -= 1
    return start, run.end


def _replace(text: str, findings: list[tuple[int, int, str]]) -> str:
    if not findings:
        return text
    out, last = [], 0
    for start, end, label in sorted(findings):
        if start < last:
            continue  # overlapping finding: the earlier one already covers it
        out += [text[last:start], f"[{label}]"]
        last = end
    out.append(text[last:])
    return "".join(out)


_KEY_HINTS = (
    ("email", "email"),
    ("iban", "account"),
    ("account", "account"),
    ("acct", "account"),
    ("card", "card"),
    ("ssn", "ssn"),
    ("social", "ssn"),
    ("phone", "phone"),
    ("mobile", "phone"),
    ("msisdn", "phone"),
    ("caller_number", "phone"),
)


def _kind_of_key(key: str) -> str | None:
    lowered = key.lower()
    return next((kind for hint, kind in _KEY_HINTS if hint in lowered), None)


def _looks_sensitive(kind: str, value: str) -> bool:
    if kind == "email":
        return "@" in value or " at " in value.lower()
    return sum(ch.isdigit() for ch in value) >= MIN_KEYWORD_DIGITS
