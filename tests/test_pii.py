"""PII redaction: phone, card (Luhn), email, SSN/national ID, account; logs and nested objects."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.config import parse_pii_patterns as parse_patterns
from voicebot.logs import RedactingFilter, install
from voicebot.nlu.pii import PATTERNS, Redactor
from voicebot.nlu.slots import luhn_ok

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
R = Redactor()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # phone
        ("call me on 555 123 4567", "call me on [phone]"),
        ("my number is 555-123-4567.", "my number is [phone]."),
        ("it's (555) 123-4567", "it's [phone]"),
        ("555.123.4567", "[phone]"),
        ("+1 555 123 4567", "[phone]"),
        ("+44 20 7946 0958 is my mobile", "[phone] is my mobile"),
        ("0044 20 7946 0958", "[phone]"),
        ("020 7946 0958", "[phone]"),
        ("five five five one two three four five six seven", "[phone]"),
        ("my cell is 555 1234", "my cell is [phone]"),
        ("555, 123, 4567", "[phone]"),
        # card
        ("my card number is 4111 1111 1111 1111", "my card number is [card]"),
        ("4111-1111-1111-1111 expires 12/26", "[card] expires 12/26"),
        ("it's 5500005555555559 thanks", "it's [card] thanks"),
        ("amex 3782 822463 10005", "amex [card]"),
        ("4111, 1111, 1111, 1111", "[card]"),
        ("card 4111 1111 1111 1111 123", "card [card]"),  # card then CVV
        ("4111 1111 1111 1111 123 is the security code", "[card] 123 is the security code"),
        ("4111 1111 1111 1111 12 26", "[card] 12 26"),  # card then expiry
        ("my card number is 4111 1111 1111 1112", "my card number is [card]"),  # keyword, misheard digit
        # No keyword and Luhn fails (a misheard digit): still too long to be anything but an identifier.
        ("4111 1111 1111 1112", "[account]"),
        ("my current number is 4,53914808034364567", "my current number is [account]"),
        # email
        ("email me at john.smith@example.com", "email me at [email]"),
        ("it's john dot smith at example dot com", "it's [email]"),
        ("J underscore Doe at mail dot co dot uk please", "[email] please"),
        ("maria.lopez at gmail.com", "[email]"),
        # ssn / national id
        ("my ssn is 123-45-6789", "my ssn is [ssn]"),
        ("123 45 6789", "[ssn]"),
        (
            "my social security number is one two three four five six seven eight nine",
            "my social security number is [ssn]",
        ),
        ("the last four of my social are 6789", "the last four of my social are [ssn]"),
        ("my NI number is AB 12 34 56 C", "my NI number is [ssn]"),
        ("national insurance JG103759A", "national insurance [ssn]"),
        # account
        ("account number 12345678", "account number [account]"),
        ("acct # 1234 5678", "acct # [account]"),
        ("my IBAN is GB82 WEST 1234 5698 7654 32", "my IBAN is [account]"),
        ("send it to de89370400440532013000", "send it to [account]"),
    ],
)
def test_masks(text: str, expected: str) -> None:
    assert R.redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order number 45712",
        "my order number is 5551234567",  # announced as an order number: not a phone
        "reference ABC-1234",
        "ticket 4111 1111 1111 1111",
        "it costs $49.99 for 3 items",
        "I paid 1,299 dollars",
        "the appointment is at 10:30 on 3/14",
        "I waited 45 minutes",
        "in 2024 I ordered 2 pizzas",
        "four five seven one two",
        "123-45-678",
        "000-12-3456",  # never issued
        "QQ 12 34 56 C",  # QQ is not an issued NI prefix
        "I'm at home dot com",
        "GB82 WEST 1234",  # bad IBAN check digits, short
        "",
    ],
)
def test_leaves_non_pii(text: str) -> None:
    assert R.redact(text) == text


def test_mixed_utterance() -> None:
    text = "order 45712, card 4111 1111 1111 1111, call me on 555 123 4567 or mail maria@example.org"
    assert R.redact(text) == "order 45712, card [card], call me on [phone] or mail [email]"


def test_patterns_can_be_switched_off() -> None:
    text = "card 4111 1111 1111 1111, phone 555 123 4567, mail a@b.com"
    assert Redactor(["phone"]).redact(text) == "card 4111 1111 1111 1111, phone [phone], mail a@b.com"
    assert Redactor(["card", "email"]).redact(text) == "card [card], phone 555 123 4567, mail [email]"
    assert Redactor([]).redact(text) == text


def test_parse_patterns() -> None:
    assert parse_patterns("phone,card") == ("phone", "card")
    assert parse_patterns(" Card , phone ,card") == ("phone", "card")
    assert parse_patterns("none") == ()
    assert parse_patterns("") == PATTERNS
    assert parse_patterns("all") == PATTERNS
    with pytest.raises(ValueError, match=r"unknown PII pattern\(s\): cards, zip .*valid: phone"):
        parse_patterns("phone,cards,zip")
    with pytest.raises(ValueError, match="unknown"):
        Redactor(["iban"])


def test_redact_obj_nested_and_key_aware() -> None:
    obj = {
        "turns": [("call me on 555 123 4567", "ok"), ["card 4111111111111111", "thanks"]],
        "slots": {"phone_number": "5551234567", "account_number": "12345678", "order_number": "45712"},
        "retrieved": [{"text": "Refunds take 5 days", "score": 0.9}],
        "n": 3,
        "none": None,
    }
    assert R.redact_obj(obj) == {
        "turns": [("call me on [phone]", "ok"), ["card [card]", "thanks"]],
        "slots": {"phone_number": "[phone]", "account_number": "[account]", "order_number": "45712"},
        "retrieved": [{"text": "Refunds take 5 days", "score": 0.9}],
        "n": 3,
        "none": None,
    }


def test_logging_filter_formats_redacts_and_clears_args(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test_pii.filter")
    log_filter = RedactingFilter(Redactor())
    logger.addFilter(log_filter)
    try:
        with caplog.at_level(logging.INFO, logger="test_pii.filter"):
            logger.info("caller %s said %r", "+15551234567", "card 4111 1111 1111 1111")
            logger.info("broken format %s %s", "555 123 4567")  # too few args must not drop the line
            try:
                raise ValueError("bad number 555-123-4567")
            except ValueError:
                logger.exception("failed for %s", "a@b.com")
    finally:
        logger.removeFilter(log_filter)
    first, second, third = caplog.records
    assert first.getMessage() == "caller [phone] said 'card [card]'" and first.args is None
    assert "[phone]" in second.getMessage() and "555" not in second.getMessage()
    assert third.getMessage() == "failed for [email]"
    assert "555-123-4567" not in caplog.text and "[phone]" in (third.exc_text or "")


def test_install_puts_the_filter_on_handlers() -> None:
    logger = logging.getLogger("test_pii.install")
    handler = logging.Handler()
    logger.addHandler(handler)
    try:
        install(Redactor(), logger)
        install(Redactor(), logger)  # idempotent
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------- property tests: cards


def _with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


@st.composite
def luhn_cards(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    first = draw(st.sampled_from("3456"))
    body = first + draw(st.text("0123456789", min_size=length - 2, max_size=length - 2))
    return _with_check_digit(body)


def _groups(digits: str, size: int) -> list[str]:
    return [digits[i : i + size] for i in range(0, len(digits), size)]


def _format(digits: str, style: str) -> str:
    if style == "plain":
        return digits
    if style == "groups4":
        return " ".join(_groups(digits, 4))
    if style == "dashes4":
        return "-".join(_groups(digits, 4))
    if style == "comma4":
        return ", ".join(_groups(digits, 4))
    if style == "spaced":
        return " ".join(digits)
    if style == "dashed":
        return "-".join(digits)
    if style == "words":
        return " ".join(WORDS[int(d)] for d in digits)
    # mixed: digits and words alternate by group, as ASR sometimes does
    return " ".join(
        g if i % 2 else " ".join(WORDS[int(d)] for d in g) for i, g in enumerate(_groups(digits, 4))
    )


STYLES = ("plain", "groups4", "dashes4", "comma4", "spaced", "dashed", "words", "mixed")
FRAMES = ("{}", "so it's {} yeah", "um {}.", "okay {} and that's it", "the card is {}", "Sure: {}!")


@settings(max_examples=300, deadline=None)
@given(card=luhn_cards(), style=st.sampled_from(STYLES), frame=st.sampled_from(FRAMES))
def test_luhn_cards_in_any_format_are_masked(card: str, style: str, frame: str) -> None:
    text = frame.format(_format(card, style))
    out = R.redact(text)
    assert out == frame.format("[card]")


@settings(max_examples=200, deadline=None)
@given(card=luhn_cards(), style=st.sampled_from(("plain", "groups4", "dashes4")))
def test_non_luhn_long_numbers_are_not_cards(card: str, style: str) -> None:
    wrong = card[:-1] + str((int(card[-1]) + 1) % 10)
    assert not luhn_ok(wrong)
    if len(wrong) == 19 and style != "plain" and luhn_ok(wrong[:16]):
        return  # 4-4-4-4-3 around a valid card reads as card + security code, by design
    text = f"so it's {_format(wrong, style)} yeah"
    assert "[card]" not in R.redact(text)


@settings(max_examples=100, deadline=None)
@given(card=luhn_cards())
def test_luhn_card_is_kept_when_announced_as_an_order(card: str) -> None:
    text = f"my order number is {card}"
    assert R.redact(text) == text
