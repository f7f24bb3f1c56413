"""Slots from caller speech: order/account/reference/phone numbers, a date and a name.

The input is ASR text, so numbers come in every shape Whisper writes: "45712", "4 5 7 1 2",
"4-5-7-1-2", "four five seven one two", "double seven", "forty five". `digit_runs` turns each
stretch of such tokens into one `DigitRun` (its span in the text and its digits); both slot
extraction and PII redaction (voicebot.nlu.pii) work on those runs, so they agree on what a number is.

What decides a slot is the keyword before a number ("order number is", "acct", "reference",
"call me on"), not the number's length alone: an order number and a price are both digits. A
number followed by a unit ("fifty dollars", "3 pm", "20 minutes") is never a slot.

Dates resolve against `today` ("tomorrow", "next Friday", "on March 3rd") to ISO yyyy-mm-dd.
A month and day without a year resolve to the nearest such date (within six months either way),
because callers speak of past orders and future deliveries alike.
"""

from __future__ import annotations

import calendar
import itertools
import re
from dataclasses import dataclass
from datetime import date, timedelta

SLOT_NAMES = ("order_number", "account_number", "reference_number", "phone_number", "date", "name")

# --------------------------------------------------------------------------- spoken numbers

_UNITS = {
    "zero": 0, "oh": 0, "nought": 0, "one": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_REPEAT = {"double": 2, "triple": 3}

_UNIT_RE = "|".join(_UNITS)
_DIGIT_OR_UNIT = rf"(?:\d|{_UNIT_RE})"
# One number token. Order matters: the longer spoken forms first.
_TOKEN_RE = re.compile(
    rf"""(?ix)
    (?<![\w+])
    (?:
        (?P<hund>\d|{_UNIT_RE})\s+hundred
      | (?P<plus>\+\s?)?(?P<digits>\d+)
      | (?P<rep>double|triple)[\s-]+(?P<repd>{_DIGIT_OR_UNIT})
      | (?P<tens>{"|".join(_TENS)})(?:[\s-]+(?P<tensu>{"|".join(k for k in _UNITS if _UNITS[k])}))?
      | (?P<teen>{"|".join(_TEENS)})
      | (?P<unit>{_UNIT_RE})
    )
    (?!\w)
    """
)
# What may stand between two tokens of one number: spaces, and one of - . , ( ).
# "/" and ":" are not here, so dates (3/14) and times (10:30) stay apart.
_GAP_RE = re.compile(r"\s*[-.,()]?\s*\)?\s*")


def _word_value(word: str) -> str:
    word = word.lower()
    return str(_UNITS[word]) if word in _UNITS else word


def _token_digits(match: re.Match[str]) -> str:
    if match["digits"]:
        return match["digits"]
    if match["rep"]:
        return _word_value(match["repd"]) * _REPEAT[match["rep"].lower()]
    if match["tens"]:
        tens = _TENS[match["tens"].lower()]
        return str(tens + _UNITS[match["tensu"].lower()]) if match["tensu"] else str(tens)
    if match["teen"]:
        return str(_TEENS[match["teen"].lower()])
    if match["hund"]:
        return _word_value(match["hund"]) + "00"
    return _word_value(match["unit"])


@dataclass(frozen=True)
class DigitRun:
    """One spoken or written number: its span in the text, its tokens' digits, and whether it had '+'."""

    start: int
    end: int
    tokens: tuple[str, ...]
    plus: bool
    # Indexes i where a comma stood between tokens[i - 1] and tokens[i]: a caller's pause, which can
    # separate two numbers ("45712, 555 123 4567").
    comma_before: frozenset[int] = frozenset()

    @property
    def digits(self) -> str:
        return "".join(self.tokens)

    def part(self, first: int, last: int, spans: tuple[tuple[int, int], ...]) -> DigitRun:
        """The sub-run of tokens[first:last] (spans: each token's span in the text)."""
        return DigitRun(
            start=spans[first][0],
            end=spans[last - 1][1],
            tokens=self.tokens[first:last],
            plus=self.plus and first == 0,
            comma_before=frozenset(i - first for i in self.comma_before if first < i < last),
        )


@dataclass(frozen=True)
class _Run:
    run: DigitRun
    spans: tuple[tuple[int, int], ...]


def _runs_with_spans(text: str) -> list[_Run]:
    runs: list[_Run] = []
    tokens: list[str] = []
    spans: list[tuple[int, int]] = []
    commas: set[int] = set()
    plus = False

    def close() -> None:
        if tokens:
            run = DigitRun(spans[0][0], spans[-1][1], tuple(tokens), plus, frozenset(commas))
            runs.append(_Run(run, tuple(spans)))

    for match in _TOKEN_RE.finditer(text):
        gap = text[spans[-1][1] : match.start()] if spans else None
        joined = gap is not None and not match["plus"] and _GAP_RE.fullmatch(gap) is not None
        if not joined:
            close()
            tokens, spans, commas, plus = [], [], set(), bool(match["plus"])
        elif gap and "," in gap:
            commas.add(len(tokens))
        tokens.append(_token_digits(match))
        spans.append((match.start(), match.end()))
    close()
    return runs


def digit_runs(text: str) -> list[DigitRun]:
    """Every number in `text`, digits or spoken, joined across spaces/dashes/dots/commas."""
    return [r.run for r in _runs_with_spans(text)]


def run_parts(text: str) -> list[tuple[DigitRun, list[DigitRun]]]:
    """Each run with its comma-separated parts (one part when there was no comma).

    A comma is a pause that may separate two numbers ("45712, 555 123 4567"), except in dictation:
    when every comma-separated piece is one token of the same length ("4, 5, 7, 1, 2",
    "4111, 1111, 1111, 1111") the run stays whole.
    """
    out = []
    for item in _runs_with_spans(text):
        run, cuts = item.run, sorted(item.run.comma_before)
        if cuts and _is_dictation(run, cuts):
            cuts = []
        bounds = [0, *cuts, len(run.tokens)]
        parts = [run.part(a, b, item.spans) for a, b in itertools.pairwise(bounds)]
        out.append((run, parts))
    return out


def _is_dictation(run: DigitRun, cuts: list[int]) -> bool:
    bounds = [0, *cuts, len(run.tokens)]
    pieces = [run.tokens[a:b] for a, b in itertools.pairwise(bounds)]
    return all(len(p) == 1 for p in pieces) and len({len(p[0]) for p in pieces}) == 1


def prefix_part(text: str, run: DigitRun, tokens: int) -> DigitRun | None:
    """The sub-run of `run`'s first `tokens` tokens (None if `run` is not a run of `text`)."""
    item = next((r for r in _runs_with_spans(text) if r.run.start == run.start), None)
    if item is None or not 0 < tokens <= len(run.tokens):
        return None
    return item.run.part(0, tokens, item.spans)


def luhn_ok(digits: str) -> bool:
    """The payment-card check digit (ISO/IEC 7812)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def looks_like_phone(run: DigitRun) -> bool:
    """A phone number by its shape alone: +international, NANP (10, or 11 with a leading 1), 0-national."""
    digits = run.digits
    if run.plus or digits.startswith("00"):
        return 8 <= len(digits.lstrip("0")) <= 15
    if [len(t) for t in run.tokens] == [3, 4] and digits[0] not in "01":
        return True  # a local NANP number, 867-5309: ASR often loses the area code
    return len(digits) == 10 or (len(digits) == 11 and digits[0] in "01")


# --------------------------------------------------------------------------- keywords before a number

_FILLER_WORDS = (
    "number|numbers|no\\.?|num|nr|id|code|is|are|was|it's|its|it|that's|be|ending|in|of|my|the|on|at"
)
_FILLER = rf"(?:\s*(?:[:#,]|-)\s*|\s+(?:{_FILLER_WORDS})(?!\w))"
# Where a number belongs, from the words right before it. Each pattern is anchored at the end of
# the text before the run, so only the words immediately preceding count.
_CONTEXT_RES: dict[str, re.Pattern[str]] = {
    kind: re.compile(rf"(?i)\b(?:{words})\.?{_FILLER}*\s*$")
    for kind, words in {
        "order": r"order|orders|purchase|invoice",
        "reference": r"reference|ref|confirmation|booking|ticket|case|tracking|claim|reservation",
        "account": r"account|acct|a/c|customer|member|membership|policy|iban",
        "card": r"card|credit card|debit card|visa|mastercard|amex",
        "ssn": r"social security|social|ssn|national insurance|ni|national id|id card|passport",
        "phone": r"phone|cell|mobile|telephone|landline|callback|call me|call me back|reach me|"
        r"text me|ring me|contact|my number|the number|your number|number to call",
    }.items()
}
_CONTEXT_ORDER = ("order", "reference", "account", "card", "ssn", "phone")
_BEFORE_WINDOW = 60


def context_of(text: str, start: int) -> str:
    """The kind of number the words before `start` announce ("order", "phone", ...), or ""."""
    before = text[max(0, start - _BEFORE_WINDOW) : start]
    for kind in _CONTEXT_ORDER:
        if _CONTEXT_RES[kind].search(before):
            return kind
    return ""


# A number followed by one of these is a quantity, price, time or duration, never an identifier.
_UNIT_AFTER_RE = re.compile(
    r"(?i)^\s*(?:%|percent|dollars?|bucks|cents?|pounds?|quid|euros?|pence|p\.?m\.?|a\.?m\.?|o'clock|"
    r"minutes?|mins?|hours?|hrs?|seconds?|secs?|days?|weeks?|months?|years?|times?|items?|pieces?|"
    r"units?|boxes|packages?|people|th|st|nd|rd)\b"
)
_CURRENCY_BEFORE_RE = re.compile(r"[$£€¥]\s*$")


def is_quantity(text: str, run: DigitRun) -> bool:
    """True when the run is an amount, time or count ("$50", "fifty dollars", "3 pm", "10:30")."""
    before, after = text[: run.start], text[run.end :]
    if _CURRENCY_BEFORE_RE.search(before) or _UNIT_AFTER_RE.match(after):
        return True
    return bool(re.match(r"^:\d", after) or re.search(r"\d:$", before))


# --------------------------------------------------------------------------- numbers as slots

# Codes with letters ("ABC-1234", "AB12CD") after a reference/order keyword. Letters must be
# capitals (ASR writes codes that way) so "reference is 1234" never reads "is" as a code.
_CODE_RE = re.compile(r"(?<![\w-])(?P<letters>[A-Z]{1,5})(?P<sep>[-\s]?)(?P<num>\d[\d-]*\d|\d)(?![\w-])")
_MIXED_RE = re.compile(r"(?<![\w-])(?=[A-Z0-9]*[A-Z])(?=[A-Z0-9]*\d)[A-Z0-9]{5,12}(?![\w-])")
_IBAN_RE = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){2,7}(?:\s?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)
# ASR may lower-case an IBAN; the mod-97 check keeps ordinary words from matching.
_IBAN_ANY_CASE_RE = re.compile(_IBAN_RE.pattern, re.IGNORECASE)

_KIND_SLOT = {"order": "order_number", "reference": "reference_number", "account": "account_number"}
_NUMBER_SLOTS = ("order_number", "account_number", "reference_number", "phone_number")
MIN_ID_DIGITS = 3
MIN_PHONE_DIGITS = 7
# Words that look like a code's letters after a keyword but are part of the phrase ("order ID 123").
_NOT_CODE_LETTERS = {"ID", "NO", "NR", "NUM", "IS", "IT", "ITS", "I", "A", "AT", "ON", "OF", "MY"}


def iban_ok(candidate: str) -> bool:
    """ISO 13616 mod-97 check of an IBAN (spaces ignored)."""
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34 or not iban.isalnum():
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def find_ibans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, compact IBAN) for every valid IBAN in the text."""
    out = []
    for match in _IBAN_ANY_CASE_RE.finditer(text):
        compact = match.group().replace(" ", "").upper()
        if iban_ok(compact):
            out.append((match.start(), match.end(), compact))
    return out


def _codes(text: str, slots: dict[str, str]) -> None:
    for regex in (_CODE_RE, _MIXED_RE):
        for match in regex.finditer(text):
            slot = _KIND_SLOT.get(context_of(text, match.start()))
            if slot and slot not in slots:
                if regex is _CODE_RE:
                    if match["letters"] in _NOT_CODE_LETTERS:
                        continue
                    sep = "-" if match["sep"] else ""
                    slots[slot] = f"{match['letters']}{sep}{match['num'].replace('-', '')}"
                else:
                    slots[slot] = match.group()


def _numbers(text: str, slots: dict[str, str], expect: str | None) -> None:
    for _whole, parts in run_parts(text):
        for run in parts:
            if is_quantity(text, run):
                continue
            kind = context_of(text, run.start)
            slot = _KIND_SLOT.get(kind)
            if not kind and expect in _NUMBER_SLOTS:
                slot = expect  # a bare number answering the question the bot just asked
            elif kind == "phone" or (not kind and looks_like_phone(run)):
                slot = "phone_number" if len(run.digits) >= MIN_PHONE_DIGITS else None
            if not slot or slot in slots:
                continue
            if slot != "phone_number" and len(run.digits) < MIN_ID_DIGITS:
                continue
            slots[slot] = ("+" if run.plus else "") + run.digits


# --------------------------------------------------------------------------- dates

_WEEKDAYS = {name.lower(): i for i, name in enumerate(calendar.day_name)}
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
_MONTHS["sept"] = 9
_ORDINAL_WORDS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip
for _unit, _n in list(_ORDINAL_WORDS.items())[:9]:
    _ORDINAL_WORDS[f"twenty {_unit}"] = 20 + _n
    _ORDINAL_WORDS[f"twenty-{_unit}"] = 20 + _n
_ORDINAL_WORDS["thirty first"] = _ORDINAL_WORDS["thirty-first"] = 31
_COUNT_WORDS = {k: v for k, v in {**_UNITS, **_TEENS}.items() if k not in ("oh", "nought", "zero")}
_COUNT_WORDS.update({"a": 1, "an": 1, "a couple of": 2, "couple of": 2, "a few": 3})

_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ORDINAL_RE = "|".join(sorted(_ORDINAL_WORDS, key=len, reverse=True))
_COUNT_RE = "|".join(sorted(_COUNT_WORDS, key=len, reverse=True))
_WEEKDAY_RE = "|".join(_WEEKDAYS)
_DAY_RE = rf"(?:(?P<dnum>\d{{1,2}})(?:st|nd|rd|th)?|(?P<dword>{_ORDINAL_RE}))"
_RELDAY_RE = "day after tomorrow|day before yesterday|today|tonight|tomorrow|yesterday"
_YEAR_RE = r"(?:,?\s+(?P<year>(?:19|20)\d\d))?"
_DATE_RES: list[tuple[str, re.Pattern[str]]] = [
    ("iso", re.compile(r"\b(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})\b")),
    ("slash", re.compile(r"(?<![\d/])(?P<m>\d{1,2})/(?P<d>\d{1,2})(?:/(?P<y>\d{2}|\d{4}))?(?![\d/])")),
    ("relday", re.compile(rf"(?i)\b(?:the\s+)?(?P<w>{_RELDAY_RE})\b")),
    ("offset", re.compile(
        rf"(?i)\b(?:in\s+(?P<n1>\d+|{_COUNT_RE})\s+(?P<u1>days?|weeks?)"
        rf"|(?P<n2>\d+|{_COUNT_RE})\s+(?P<u2>days?|weeks?)\s+ago)\b")),
    ("month_day", re.compile(rf"(?i)\b(?P<mon>{_MONTH_RE})\.?\s+(?:the\s+)?{_DAY_RE}(?![\w:]){_YEAR_RE}")),
    ("day_month", re.compile(rf"(?i)\b(?:the\s+)?{_DAY_RE}\s+(?:of\s+)?(?P<mon>{_MONTH_RE})\b\.?{_YEAR_RE}")),
    ("weekday", re.compile(rf"(?i)\b(?:(?P<rel>next|this|last|coming|on)\s+)?(?P<wd>{_WEEKDAY_RE})\b")),
    ("day_only", re.compile(rf"(?i)\b(?:on|by|before|after|until)\s+the\s+{_DAY_RE}\b")),
]  # fmt: skip


def _nearest(today: date, candidates: list[date]) -> date:
    return min(candidates, key=lambda d: abs((d - today).days))


def _safe_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _day_number(match: re.Match[str]) -> int:
    return int(match["dnum"]) if match["dnum"] else _ORDINAL_WORDS[match["dword"].lower()]


def _count(word: str) -> int:
    return int(word) if word.isdigit() else _COUNT_WORDS[word.lower()]


def _resolve(kind: str, m: re.Match[str], today: date) -> date | None:
    if kind == "iso":
        return _safe_date(int(m["y"]), int(m["m"]), int(m["d"]))
    if kind == "slash":
        year = int(m["y"]) if m["y"] else None
        if year is not None and year < 100:
            year += 2000
        return _month_day(today, int(m["m"]), int(m["d"]), year)
    if kind == "relday":
        offsets = {"today": 0, "tonight": 0, "tomorrow": 1, "yesterday": -1}
        offsets.update({"day after tomorrow": 2, "day before yesterday": -2})
        return today + timedelta(days=offsets[m["w"].lower()])
    if kind == "offset":
        n, unit, sign = (m["n1"], m["u1"], 1) if m["n1"] else (m["n2"], m["u2"], -1)
        days = _count(n) * (7 if unit.lower().startswith("week") else 1)
        return today + timedelta(days=sign * days)
    if kind in ("month_day", "day_month"):
        year = int(m["year"]) if m["year"] else None
        return _month_day(today, _MONTHS[m["mon"].lower().rstrip(".")], _day_number(m), year)
    if kind == "weekday":
        return _weekday(today, _WEEKDAYS[m["wd"].lower()], (m["rel"] or "").lower())
    if kind == "day_only":
        day = _day_number(m)
        months = [(today.year, today.month + k) for k in (-1, 0, 1)]
        found = [_safe_date(y + (mo - 1) // 12, (mo - 1) % 12 + 1, day) for y, mo in months]
        valid = [d for d in found if d]
        return _nearest(today, valid) if valid else None
    return None


def _month_day(today: date, month: int, day: int, year: int | None) -> date | None:
    if year is not None:
        return _safe_date(year, month, day)
    found = [_safe_date(today.year + k, month, day) for k in (-1, 0, 1)]
    valid = [d for d in found if d]
    return _nearest(today, valid) if valid else None


def _weekday(today: date, weekday: int, rel: str) -> date:
    ahead = (weekday - today.weekday()) % 7
    if rel == "last":
        return today - timedelta(days=(today.weekday() - weekday) % 7 or 7)
    if rel == "next" and ahead == 0:
        ahead = 7  # "next Friday" said on a Friday is a week away; otherwise the coming one
    return today + timedelta(days=ahead)


def _find_date(text: str, today: date) -> str | None:
    """The first date mentioned, ISO when resolvable, else the words as said."""
    found: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    for kind, regex in _DATE_RES:
        for m in regex.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue  # already read by a more specific pattern ("the 3rd of March" vs "the 3rd")
            resolved = _resolve(kind, m, today)
            taken.append((m.start(), m.end()))
            found.append((m.start(), resolved.isoformat() if resolved else m.group().strip()))
    return min(found)[1] if found else None


# --------------------------------------------------------------------------- names

_NAME_WORD = r"[A-Za-z][A-Za-z'’-]*"
_NAME_INTRO_RE = re.compile(
    r"(?i:\b(?P<strong>my name is|my name's|name is|name's|the name is)"
    r"|\b(?P<weak>this is|i am|i'm|it's|call me|you're speaking (?:to|with)|speaking with|i'm called))"
    rf"\s+(?P<words>{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,3}})"
)
_NOT_NAME = {
    "and", "but", "so", "i", "i'm", "my", "from", "calling", "about", "the", "a", "an", "on", "at", "in",
    "with", "here", "speaking", "again", "please", "thanks", "thank", "you", "it", "is", "not", "just",
    "back", "order", "account", "phone", "number", "sorry", "hi", "hello", "yes", "no", "ok", "okay",
    "really", "very", "still", "trying", "looking", "having", "going", "your", "for",
    "to", "of", "who", "that", "what", "because", "regarding", "re", "sir", "madam", "mister",
}  # fmt: skip
_NOT_NAME_CAPS = {d.lower() for d in _WEEKDAYS} | set(_MONTHS) | {"i", "i'm", "ok", "okay", "hi", "hello"}
MAX_NAME_WORDS = 3


def _find_name(text: str) -> str | None:
    for m in _NAME_INTRO_RE.finditer(text):
        strong = bool(m["strong"])
        if (m["weak"] or "").lower() == "call me" and re.match(r"(?i)(?:on|at|back|later)\b", m["words"]):
            continue  # "call me on 555...", "call me back"
        words: list[str] = []
        for word in m["words"].split():
            bare = re.sub(r"['’]s$", "", word.lower()).strip("'’-")
            if bare in _NOT_NAME or bare in _NOT_NAME_CAPS or len(words) == MAX_NAME_WORDS:
                break
            if not strong and not word[0].isupper():
                break  # after "this is"/"I'm" only a capitalised word is a name ("this is ridiculous")
            words.append(word)
        if words:
            return " ".join(w if any(c.isupper() for c in w) else w.capitalize() for w in words)
    return None


# --------------------------------------------------------------------------- entry point


def extract_slots(text: str, today: date | None = None, expect: str | None = None) -> dict[str, str]:
    """Slots found in one caller utterance: only those present, each as a string.

    `today` anchors relative dates (default: the local date). `expect` names the slot the bot
    just asked for ("order_number"...): a bare number in the answer then fills it, unless it is an
    amount or a time.
    """
    slots: dict[str, str] = {}
    for _start, _end, iban in find_ibans(text):
        slots.setdefault("account_number", iban)
    _codes(text, slots)
    _numbers(text, slots, expect)
    found_date = _find_date(text, today or date.today())
    if found_date:
        slots["date"] = found_date
    name = _find_name(text)
    if name:
        slots["name"] = name
    return slots
