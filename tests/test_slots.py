"""Slot extraction from ASR-style caller text (digits, spaced/dashed digits, digit words, dates, names)."""

from __future__ import annotations

from datetime import date

import pytest

from voicebot.nlu.slots import digit_runs, extract_slots, luhn_ok

TODAY = date(2025, 3, 12)  # a Wednesday


@pytest.mark.parametrize(
    "text",
    [
        "my order number is 45712",
        "My order number is 45712.",
        "order #45712",
        "order # 45712",
        "order no. 45712",
        "it's order 45712",
        "order number 4 5 7 1 2",
        "order number 4-5-7-1-2",
        "order number 4.5.7.1.2",
        "my order number is four five seven one two",
        "Order number: Four, five, seven, one, two.",
        "the order is forty five seven twelve",
        "order ID 45712",
        "I'm calling about my order, it's 45712",
        "uh yeah, the order number, it's 4 57 12",
    ],
)
def test_order_number_phrasings(text: str) -> None:
    assert extract_slots(text, today=TODAY)["order_number"] == "45712"


def test_double_and_triple_digits() -> None:
    assert extract_slots("order number double seven three one two")["order_number"] == "77312"
    assert extract_slots("order number triple five oh one")["order_number"] == "55501"
    assert extract_slots("order number one two double oh nine")["order_number"] == "12009"


@pytest.mark.parametrize(
    "text",
    [
        "my order was fifty dollars",
        "my order was 50 dollars",
        "the order cost $45712",
        "I ordered it at 3 pm",
        "my order came at 10:30",
        "can you call me at 3 pm",
        "I waited 45 minutes for my order",
        "it's 45712",  # a bare number with no keyword and no question asked
        "I ordered 2 pizzas",
        "order of 3 items",
    ],
)
def test_amounts_times_and_bare_numbers_are_not_order_numbers(text: str) -> None:
    assert "order_number" not in extract_slots(text, today=TODAY)


def test_expected_slot_takes_a_bare_number_but_not_an_amount() -> None:
    assert extract_slots("45712", expect="order_number") == {"order_number": "45712"}
    assert extract_slots("it's four five seven one two", expect="order_number") == {"order_number": "45712"}
    assert extract_slots("fifty dollars", expect="order_number") == {}
    assert extract_slots("at 3:30", expect="order_number") == {}
    assert extract_slots("12", expect="order_number") == {}  # too short for an identifier
    assert extract_slots("5551234567", expect="account_number") == {"account_number": "5551234567"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my account number is 12345678", "12345678"),
        ("acct # 1234 5678", "12345678"),
        ("account: one two three four five six", "123456"),
        ("my IBAN is GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432"),
        ("it's gb82west12345698765432", "GB82WEST12345698765432"),
    ],
)
def test_account_numbers(text: str, expected: str) -> None:
    assert extract_slots(text)["account_number"] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reference ABC-1234", "ABC-1234"),
        ("my reference number is ABC 1234", "ABC-1234"),
        ("the confirmation code is K7P2QX", "K7P2QX"),
        ("ticket number 88213", "88213"),
        ("case number is 4 4 1 9 0", "44190"),
        ("ref: XY-99812", "XY-99812"),
    ],
)
def test_reference_numbers(text: str, expected: str) -> None:
    assert extract_slots(text)["reference_number"] == expected


def test_code_letters_are_not_keyword_words() -> None:
    # "ID" here belongs to the phrase, not to the number.
    assert extract_slots("my order ID 12345") == {"order_number": "12345"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call me on 555 123 4567", "5551234567"),
        ("you can reach me at 555-123-4567", "5551234567"),
        ("my phone number is five five five one two three four five six seven", "5551234567"),
        ("my number is +44 20 7946 0958", "+442079460958"),
        ("it's (555) 123-4567", "5551234567"),
        ("my cell is 555 1234", "5551234"),
        ("1 800 555 0199", "18005550199"),
        ("call me back on eight hundred five five five oh one nine nine", "8005550199"),
    ],
)
def test_phone_numbers(text: str, expected: str) -> None:
    assert extract_slots(text)["phone_number"] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tomorrow", "2025-03-13"),
        ("it was delivered yesterday", "2025-03-11"),
        ("the day after tomorrow", "2025-03-14"),
        ("on March 3rd", "2025-03-03"),
        ("on the 3rd of March", "2025-03-03"),
        ("march third", "2025-03-03"),
        ("on Dec. 25", "2024-12-25"),  # nearest December 25th is the past one
        ("by June 1st", "2025-06-01"),
        ("on the twenty first of April 2026", "2026-04-21"),
        ("next Friday", "2025-03-14"),
        ("on Monday", "2025-03-17"),
        ("last Monday", "2025-03-10"),
        ("this Wednesday", "2025-03-12"),
        ("next Wednesday", "2025-03-19"),
        ("in two weeks", "2025-03-26"),
        ("it shipped 3 days ago", "2025-03-09"),
        ("on 2025-01-05", "2025-01-05"),
        ("on 4/15", "2025-04-15"),
        ("on the 28th", "2025-02-28"),
        ("February 30th", "February 30th"),  # not a real date: kept as said
    ],
)
def test_dates_relative_to_today(text: str, expected: str) -> None:
    assert extract_slots(text, today=TODAY)["date"] == expected


def test_first_date_wins_and_today_defaults() -> None:
    assert extract_slots("tomorrow or on Friday", today=TODAY)["date"] == "2025-03-13"
    assert extract_slots("today")["date"] == date.today().isoformat()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my name is Maria Lopez", "Maria Lopez"),
        ("my name is maria lopez", "Maria Lopez"),
        ("Hi, this is Maria from accounting", "Maria"),
        ("I'm John Smith.", "John Smith"),
        ("name's Jean-Luc O'Neill and I need help", "Jean-Luc O'Neill"),
        ("you can call me Sam", "Sam"),
    ],
)
def test_names(text: str, expected: str) -> None:
    assert extract_slots(text)["name"] == expected


@pytest.mark.parametrize(
    "text",
    [
        "this is ridiculous",
        "I'm calling about my order",
        "call me on 555 123 4567",
        "call me back",
        "I'm very upset",
        "this is Monday's order",
    ],
)
def test_not_names(text: str) -> None:
    assert "name" not in extract_slots(text, today=TODAY)


def test_several_slots_in_one_utterance() -> None:
    text = (
        "my name is Maria Lopez, order number 45712, it was supposed to arrive last Friday, "
        "call me on 555 123 4567"
    )
    assert extract_slots(text, today=TODAY) == {
        "name": "Maria Lopez",
        "order_number": "45712",
        "date": "2025-03-07",
        "phone_number": "5551234567",
    }


def test_questions_without_slots() -> None:
    assert extract_slots("when will it arrive?", today=TODAY) == {}
    assert extract_slots("what are your opening hours", today=TODAY) == {}


def test_digit_runs_and_luhn() -> None:
    runs = digit_runs("order 4 5 7 1 2 then call +1 555-123-4567")
    assert [(r.digits, r.plus) for r in runs] == [("45712", False), ("15551234567", True)]
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
