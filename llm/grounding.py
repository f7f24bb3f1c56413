"""Is a generated answer supported by the retrieved passages? A conservative check.

The bundled model is a base model, so a generated answer may only be spoken when this check
passes. Two rules, both must hold:

1. Every fact-like token in the answer (number, price, percentage, time, date, month, weekday)
   appears in the sources. Numbers are compared by value, whatever way they are written:
   "fifty dollars" == "$50" == "50 dollars", "$4.99" == "four dollars and ninety-nine cents",
   "March 3rd" == "the third of March", "9 a.m." == "nine am", "1,000" == "one thousand".
   A price must be a price (or a bare number) in the sources, a time must be that time.
2. Most content words (stopwords removed, light stemming) appear in the sources, capitalised
   names all do, and no sentence flips the polarity ("can" vs "cannot") of the source sentence it
   draws on.

When unsure it rejects: a false rejection costs a fallback to the knowledge-base answer, a false
acceptance speaks an invented fact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

MIN_WORD_SUPPORT = 0.8
MIN_PREFIX_MATCH = 5


@dataclass(frozen=True)
class Grounding:
    ok: bool
    reason: str
    unsupported: list[str] = field(default_factory=list)


def check(
    text: str,
    sources: Sequence[str],
    *,
    known: Sequence[str] = (),
    min_word_support: float = MIN_WORD_SUPPORT,
) -> Grounding:
    """Whether `text` is supported by `sources` (the retrieved passages).

    `known`: what the call itself established ("order number 45712"): usable in any clause, next
    to any source sentence ("Your order 45712 can be cancelled within one hour").
    """
    answer = _analyse(text, clause_breaks=True)
    source = _analyse("\n".join(sources), clause_breaks=False)
    extra = _analyse("\n".join(known), clause_breaks=False)
    source.facts += extra.facts
    source.words += extra.words
    source.other_stems |= extra.other_stems
    for sentence in source.sentences:
        sentence.facts += extra.facts
        sentence.stems |= {stem for _, stem in extra.words}
    if not answer.facts and not answer.words:
        return Grounding(False, "nothing to ground")
    bad_facts = [f.surface for f in answer.facts if not _fact_supported(f, source.facts)]
    if bad_facts:
        return Grounding(False, "unsupported facts: " + ", ".join(bad_facts), bad_facts)
    stems = {stem for _, stem in source.words} | source.other_stems
    bad_words = [surface for surface, stem in answer.words if not _stem_supported(stem, stems)]
    bad_names = [name for name in _names(text) if not _stem_supported(_stem(name.lower()), stems)]
    if bad_names:
        return Grounding(False, "unsupported names: " + ", ".join(bad_names), bad_names)
    if answer.words and 1 - len(bad_words) / len(answer.words) < min_word_support:
        return Grounding(False, "unsupported words: " + ", ".join(bad_words), bad_words)
    for clause in answer.sentences:
        problem = _clause_problem(clause, source.sentences, stems, min_word_support)
        if problem:
            return Grounding(False, f"{problem}: {clause.text}", [clause.text])
    return Grounding(True, "supported", bad_words)


def _clause_problem(
    clause: _Sentence, sources: list[_Sentence], all_stems: set[str], min_word_support: float
) -> str:
    """Each answer clause must rest on one source sentence: all its facts there, no word taken from
    another sentence ("Express delivery takes 3 to 5 days" from "Standard ... 3 to 5 days" and
    "Express ... 1 to 2 days"), and the same polarity ("can" vs "cannot")."""
    if not clause.facts and not clause.stems:
        return ""
    holding = [s for s in sources if all(_fact_supported(f, s.facts) for f in clause.facts)]
    if not holding:
        return "facts from different sentences"
    best = max(holding, key=lambda s: _overlap(clause.stems, s.stems))
    borrowed = [
        w for w in clause.stems if _stem_supported(w, all_stems) and not _stem_supported(w, best.stems)
    ]
    if borrowed:
        return "mixes sentences (" + ", ".join(sorted(borrowed)) + ")"
    # Per clause too: "... from the My Orders page to your phone number" adds an unsupported claim
    # that a whole-answer ratio would let through.
    if clause.stems and _overlap(clause.stems, best.stems) / len(clause.stems) < min_word_support:
        return "clause not supported by its source sentence"
    if clause.negated != best.negated and (clause.stems or best.negated):
        return "negation differs from the source"
    return ""


def _overlap(stems: set[str], other: set[str]) -> int:
    return sum(_stem_supported(w, other) for w in stems)


# --- facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    kind: str  # number | money | percent | time | date | month | weekday
    value: str  # canonical: "4.99", "9:00", "3-15", "march", "monday"
    surface: str  # as written in the text, for the report
    meridiem: str = ""  # "am" / "pm" for times when said


_NUMERIC_KINDS = ("number", "money", "percent")


def _fact_supported(fact: Fact, source: list[Fact]) -> bool:
    if fact.kind == "number":  # also "open 9 to 6" from "9 a.m. to 6 p.m.", "the 3rd" from "March 3rd"
        return any(
            (s.kind in _NUMERIC_KINDS and s.value == fact.value)
            or (s.kind == "time" and s.value == f"{fact.value}:00")
            or (s.kind == "date" and s.value.endswith(f"-{fact.value}"))
            for s in source
        )
    if fact.kind in ("money", "percent"):
        # A bare "4.99" in the sources is a price; a bare "5" is more likely a count of days.
        return any(
            s.value == fact.value and (s.kind == fact.kind or (s.kind == "number" and "." in s.value))
            for s in source
        )
    if fact.kind == "time":
        return any(
            s.kind == "time" and s.value == fact.value and (fact.meridiem in ("", s.meridiem)) for s in source
        )
    if fact.kind == "month":
        return any(
            (s.kind == "month" and s.value == fact.value)
            or (s.kind == "date" and s.value.startswith(fact.value + "-"))
            for s in source
        )
    return any(s.kind == fact.kind and s.value == fact.value for s in source)


# --- analysis -----------------------------------------------------------------------------------


@dataclass
class _Sentence:
    text: str
    facts: list[Fact] = field(default_factory=list)
    stems: set[str] = field(default_factory=set)  # content-word stems
    negated: bool = False


@dataclass
class _Analysis:
    facts: list[Fact] = field(default_factory=list)
    words: list[tuple[str, str]] = field(default_factory=list)  # (surface, stem) of content words
    other_stems: set[str] = field(default_factory=set)  # every word's stem, stopwords included
    sentences: list[_Sentence] = field(default_factory=list)


@dataclass
class _Tok:
    text: str
    kind: str  # word | num | punct
    value: Decimal | None = None
    ordinal_word: bool = False  # "third": a number only inside a date
    used: bool = False
    fact: Fact | None = None  # the fact this token starts


_CLAUSE_WORDS = {"and", "but", "or", "so", "while", "although", "because"}


def _analyse(text: str, *, clause_breaks: bool) -> _Analysis:
    """Facts, content words and sentences of `text`. With clause_breaks (answers), commas and free
    conjunctions also end a unit, so each clause is checked against one source sentence."""
    tokens = _number_words(_tokens(_prepare(text)))
    result = _Analysis()
    result.facts = _facts(tokens)
    unit: list[_Tok] = []
    for tok in [*tokens, _Tok(".", "punct")]:
        breaks = tok.kind == "punct" and (clause_breaks or tok.text != ",")
        if clause_breaks and tok.kind == "word" and not tok.used and tok.text in _CLAUSE_WORDS:
            breaks = True
        if breaks:
            _close_sentence(unit, result)
            unit = []
        elif tok.kind != "punct":
            unit.append(tok)
    return result


def _close_sentence(tokens: list[_Tok], result: _Analysis) -> None:
    if not tokens:
        return
    sentence = _Sentence(" ".join(t.text for t in tokens))
    for tok in tokens:
        if tok.fact is not None:
            sentence.facts.append(tok.fact)
        if tok.kind != "word":
            continue
        word = tok.text
        is_negation = word in _NEGATIONS or word.endswith("n't")
        sentence.negated = sentence.negated or is_negation
        stem = _stem(word)
        result.other_stems.add(stem)
        if tok.used or word in _STOPWORDS or is_negation:
            continue
        result.words.append((word, stem))
        sentence.stems.add(stem)
    result.sentences.append(sentence)


def _prepare(text: str) -> str:
    text = text.replace("’", "'").replace("‘", "'").lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", text)  # a.m. -> am
    text = re.sub(r"(\d)\s*([ap]m)\b", r"\1 \2", text)  # 9am -> 9 am
    text = re.sub(r"\bnoon\b", "12 pm", text)
    text = re.sub(r"\bmidnight\b", "12 am", text)
    text = re.sub(r"\$\s?(\d+(?:\.\d+)?)", r"\1 dollars", text)
    text = re.sub(r"€\s?(\d+(?:\.\d+)?)", r"\1 euros", text)
    text = re.sub(r"£\s?(\d+(?:\.\d+)?)", r"\1 pounds", text)
    text = re.sub(r"(\d)\s*%", r"\1 percent", text)
    text = text.replace("per cent", "percent")
    return re.sub(r"\b(\d{4})-(\d{2})-(\d{2})\b", _iso_date, text)


def _iso_date(match: re.Match[str]) -> str:
    year, month, day = (int(g) for g in match.groups())
    if not 1 <= month <= 12:
        return match.group(0)
    return f"{_MONTHS[month - 1]} {day} {year}"


_TOKEN_RE = re.compile(r"\d+:\d{2}|\d+(?:\.\d+)?(?:st|nd|rd|th)?|[a-z]+(?:'[a-z]+)*|[.!?;,\n]")


def _tokens(text: str) -> list[_Tok]:
    tokens = []
    for match in _TOKEN_RE.finditer(text):
        piece = match.group(0)
        if piece[0].isdigit() and ":" not in piece:
            tokens.append(_Tok(piece, "num", _decimal(re.sub(r"[a-z]+$", "", piece))))
        elif piece[0].isdigit():
            tokens.append(_Tok(piece, "num"))  # a clock time, value read in _facts
        elif piece in ".!?;,\n":
            tokens.append(_Tok(piece, "punct"))
        else:
            tokens.append(_Tok(piece, "word"))
    return tokens


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _canon(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _split(words: str) -> list[str]:
    return words.split()


# --- number words -------------------------------------------------------------------------------

_UNITS = {w: i for i, w in enumerate(_split("zero one two three four five six seven eight nine"))}
_TEENS = {
    w: i + 10
    for i, w in enumerate(
        _split("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen")
    )
}
_TENS = {
    w: (i + 2) * 10 for i, w in enumerate(_split("twenty thirty forty fifty sixty seventy eighty ninety"))
}
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
    "twentieth": 20, "thirtieth": 30,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
# "one" is a pronoun here, not a quantity.
_ONE_IDIOMS_BEFORE = {"no", "any", "every", "some", "this", "that", "which", "each", "the", "someone"}
_ONE_IDIOMS_AFTER = {"of", "another"}


def _number_words(tokens: list[_Tok]) -> list[_Tok]:
    """Replace runs of number words ("ninety nine", "one thousand two hundred") by number tokens."""
    out: list[_Tok] = []
    i = 0
    while i < len(tokens):
        run_end, value, ordinal = _read_number(tokens, i)
        if run_end == i:
            out.append(tokens[i])
            i += 1
            continue
        surface = " ".join(t.text for t in tokens[i:run_end])
        if surface == "one" and _is_pronoun_one(tokens, i):
            out.append(tokens[i])
        else:
            out.append(_Tok(surface, "num", Decimal(value), ordinal_word=ordinal))
        i = run_end
    return out


def _is_pronoun_one(tokens: list[_Tok], i: int) -> bool:
    before = tokens[i - 1].text if i > 0 else ""
    after = tokens[i + 1].text if i + 1 < len(tokens) else ""
    return before in _ONE_IDIOMS_BEFORE or after in _ONE_IDIOMS_AFTER


def _read_number(tokens: list[_Tok], start: int) -> tuple[int, int, bool]:
    """(end index, value, ends with an ordinal word) of the number-word run at `start`."""
    total = current = 0
    last = ""  # kind of the last word: unit, teen, tens, scale
    i = start
    while i < len(tokens) and tokens[i].kind == "word":
        word = tokens[i].text
        if word in _UNITS and (last in ("", "tens", "scale")) and current % 10 == 0:
            current += _UNITS[word]
            last = "unit"
        elif word in _ORDINALS and (last in ("", "tens", "scale")) and current % 10 == 0:
            return i + 1, total + current + _ORDINALS[word], True
        elif word in _TEENS and last in ("", "scale") and current % 100 == 0:
            current += _TEENS[word]
            last = "teen"
        elif word in _TENS and last in ("", "scale") and current % 100 == 0:
            current += _TENS[word]
            last = "tens"
        elif word == "hundred" and 0 < current < 100 and last != "scale":
            current *= 100
            last = "scale"
        elif word in ("thousand", "million") and total + current > 0 and last != "scale":
            total, current = (total + current) * _SCALES[word], 0
            last = "scale"
        elif word == "and" and last == "scale" and _next_is_number_word(tokens, i + 1):
            pass
        else:
            break
        i += 1
    return i, total + current, False


def _next_is_number_word(tokens: list[_Tok], i: int) -> bool:
    return i < len(tokens) and tokens[i].text in {**_UNITS, **_TEENS, **_TENS}


# --- facts from tokens --------------------------------------------------------------------------

_MONTHS = _split("january february march april may june july august september october november december")
_MONTH_ABBR = {m[:3]: m for m in _MONTHS} | {"sept": "september"}
_WEEKDAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
_MONEY = {"dollar", "dollars", "bucks", "usd", "euro", "euros", "eur", "pound", "pounds", "gbp"}
_CENTS = {"cent", "cents"}


def _word_at(tokens: list[_Tok], i: int) -> str:
    return tokens[i].text if 0 <= i < len(tokens) and tokens[i].kind == "word" else ""


def _month_at(tokens: list[_Tok], i: int, *, strict: bool = False) -> str:
    word = _word_at(tokens, i)
    if word in _MONTHS:
        return word
    return "" if strict else _MONTH_ABBR.get(word, "")


def _facts(tokens: list[_Tok]) -> list[Fact]:
    facts: list[Fact] = []
    for i, tok in enumerate(tokens):
        if tok.used:
            continue
        fact = None
        if tok.kind == "num":
            fact = _number_fact(tokens, i)
        elif tok.kind == "word":
            fact = _word_fact(tok)
            tok.used = fact is not None
        if fact is not None:
            tok.fact = fact
            facts.append(fact)
    return facts


def _word_fact(tok: _Tok) -> Fact | None:
    # "may" alone is the verb; months count only when spelled fully (abbreviations are often words).
    if tok.text in _MONTHS and tok.text != "may":
        return Fact("month", tok.text, tok.text)
    if tok.text in _WEEKDAYS or tok.text.rstrip("s") in _WEEKDAYS:
        return Fact("weekday", tok.text.rstrip("s"), tok.text)
    return None


def _number_fact(tokens: list[_Tok], i: int) -> Fact | None:
    tok = tokens[i]
    tok.used = True
    if tok.value is None:  # "9:30"
        hour, minute = (int(p) for p in tok.text.split(":"))
        return _time(tokens, i, hour, minute, tok.text)
    date = _date(tokens, i)
    if date is not None:
        return date
    if tok.ordinal_word:
        tok.used = False  # "first class": a word, checked as a content word
        tok.kind = "word"
        return None
    value, after = tok.value, _word_at(tokens, i + 1)
    if after in _MONEY:
        return _money(tokens, i, value)
    if after in _CENTS:
        tokens[i + 1].used = True
        return Fact("money", _canon(value / 100), f"{tok.text} {after}")
    if after == "percent":
        tokens[i + 1].used = True
        return Fact("percent", _canon(value), f"{tok.text} percent")
    if after in ("am", "pm", "o'clock") and value == int(value) and 0 < value <= 12:
        return _time(tokens, i, int(value), 0, tok.text)
    if _is_hour_minute(tokens, i):
        minute = tokens[i + 1]
        minute.used = True
        return _time(tokens, i + 1, int(value), int(minute.value or 0), f"{tok.text} {minute.text}")
    return Fact("number", _canon(value), tok.text)


def _is_hour_minute(tokens: list[_Tok], i: int) -> bool:
    """ "nine thirty pm": an hour word, a minutes number, then am/pm."""
    if i + 2 >= len(tokens) or tokens[i + 1].kind != "num" or tokens[i + 1].value is None:
        return False
    hour, minute = tokens[i].value or Decimal(0), tokens[i + 1].value or Decimal(0)
    return 0 < hour <= 12 and 0 <= minute < 60 and _word_at(tokens, i + 2) in ("am", "pm")


def _time(tokens: list[_Tok], i: int, hour: int, minute: int, surface: str) -> Fact:
    meridiem = _word_at(tokens, i + 1)
    if meridiem in ("am", "pm", "o'clock"):
        tokens[i + 1].used = True
        surface = f"{surface} {meridiem}"
    meridiem = meridiem if meridiem in ("am", "pm") else ""
    if hour > 12:  # 24-hour clock
        hour, meridiem = hour - 12, "pm"
    return Fact("time", f"{hour}:{minute:02d}", surface, meridiem)


def _money(tokens: list[_Tok], i: int, value: Decimal) -> Fact:
    tokens[i + 1].used = True
    surface = f"{tokens[i].text} {tokens[i + 1].text}"
    j = i + 2
    if _word_at(tokens, j) == "and":
        j += 1
    if (
        j + 1 < len(tokens)
        and tokens[j].kind == "num"
        and tokens[j].value is not None
        and _word_at(tokens, j + 1) in _CENTS
    ):
        value += tokens[j].value / 100
        for k in range(i + 2, j + 2):
            tokens[k].used = True
        surface += f" and {tokens[j].text} cents"
    return Fact("money", _canon(value), surface)


def _date(tokens: list[_Tok], i: int) -> Fact | None:
    tok = tokens[i]
    if tok.value is None or tok.value != int(tok.value) or not 1 <= tok.value <= 31:
        return None
    for month_index, extra in ((i - 1, ()), (i + 1, ()), (i + 2, (i + 1,))):
        if extra and _word_at(tokens, i + 1) != "of":
            continue
        month = _month_at(tokens, month_index)
        if month:
            tokens[month_index].used = True
            for k in extra:
                tokens[k].used = True
            surface = " ".join(t.text for t in tokens[min(i, month_index) : max(i, month_index) + 1])
            return Fact("date", f"{month}-{int(tok.value)}", surface)
    return None


# --- words --------------------------------------------------------------------------------------

_NEGATIONS = {"not", "no", "never", "cannot", "nothing", "none", "nobody", "neither", "nor"}
_STOPWORDS = set(
    _split(
        """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each either else ever every few for
    from further had has have having he her here hers herself him himself his how i i'm i'd i'll i've if in
    into is it it's its itself just let let's me more most much must my myself of off on once only or
    other our ours ourselves out over own same shall she should so some such than that that's the their
    theirs them themselves then there there's these they they're this those through to too under until up
    upon very was we we're we've we'll we'd were what what's when where which while who whom whose why will
    with would you you're you'll you've you'd your yours yourself yourselves yes yeah okay ok one ones
    please sure certainly course happy glad help thanks thank welcome hello hi great absolutely just
    simply may might can get gets got able via per like"""
    )
)


def _stem(word: str) -> str:
    word = word.removesuffix("'s").strip("'")
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        word = _undouble(word[:-3])
    elif len(word) > 4 and word.endswith("ed"):
        word = _undouble(word[:-2])
    if len(word) > 5 and word.endswith("ly"):
        word = word[:-2]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def _undouble(word: str) -> str:
    if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "aeiouslz":
        return word[:-1]
    return word


def _stem_supported(stem: str, stems: set[str]) -> bool:
    if stem in stems:
        return True
    if len(stem) < MIN_PREFIX_MATCH:
        return False
    return any(len(s) >= MIN_PREFIX_MATCH and (s.startswith(stem) or stem.startswith(s)) for s in stems)


def _names(text: str) -> Iterable[str]:
    """Capitalised words that do not start a sentence: names, brands, plans. All must be supported."""
    for sentence in re.split(r"[.!?;:\n]+", text):
        words = re.findall(r"[A-Za-z][A-Za-z'’]*", sentence)
        for word in words[1:]:
            if word[0].isupper() and word not in ("I", "I'm", "I'll", "I've", "I'd", "I’m"):
                yield word
