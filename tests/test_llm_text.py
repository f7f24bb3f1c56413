"""Prompts, clause splitting and the groundedness check (pure text, no model)."""

from __future__ import annotations

import pytest

from llm.clauses import ClauseSplitter
from llm.grounding import check
from llm.prompts import GEMMA_STOP, REFUSAL, STOP, build_prompt, fact_lines, is_refusal, stop_sequences

# Passages in the style of the demo FAQ (number words and digits both occur in real knowledge bases).
SOURCES = [
    "Standard shipping costs four dollars and ninety-nine cents, and orders over fifty dollars ship free.",
    "Standard delivery takes three to five business days. Express delivery arrives in one to two days.",
    "You can cancel an order within one hour of placing it, from the My Orders page.",
    "Unopened items can be returned within 30 days for a full refund. Opened items cannot be returned.",
    "Our phone line is open Monday to Friday from 9 a.m. to 6 p.m. The spring sale ends on March 3rd.",
    "Members get 10% off every order. There is no minimum order value. Gift cards start at $1,000.",
]


# --- prompts ------------------------------------------------------------------------------------


def test_prompt_carries_passages_history_and_facts_and_ends_where_the_answer_starts() -> None:
    prompt = build_prompt(
        "When will it arrive?",
        ["Standard delivery takes three to five business days.", "Express delivery: one to two days."],
        history=[("I want to check my order", "Sure, what is your order number?")],
        facts={"order_number": "45712"},
    )
    assert prompt.endswith("Caller: When will it arrive?\nAgent:")
    assert "- Standard delivery takes three to five business days." in prompt
    assert "order number is 45712" in prompt
    assert "Caller: I want to check my order\nAgent: Sure, what is your order number?" in prompt
    assert REFUSAL in prompt  # the few-shot examples teach the refusal phrase
    assert "\n" in STOP


def test_prompt_is_compact_and_keeps_a_fixed_prefix_for_the_kv_cache() -> None:
    long_passage = "word " * 500
    many = build_prompt("q?", [long_passage] * 10, history=[("hi", "hello")] * 20, facts={})
    assert len(many.split()) < 450
    one = build_prompt("Other question?", ["Something else entirely."], (), {})
    prefix = many[: many.index("Notes:\n- word")]
    assert one.startswith(prefix) and len(prefix) > 200


def test_prompt_gemma_style_and_no_passages() -> None:
    prompt = build_prompt("Do you sell gift cards?", [], (), {}, style="gemma")
    assert prompt.startswith("<start_of_turn>user\n") and prompt.endswith("<start_of_turn>model\n")
    assert "- (none)" in prompt
    assert stop_sequences("gemma") == GEMMA_STOP and stop_sequences() == STOP


def test_is_refusal() -> None:
    assert is_refusal(REFUSAL)
    assert is_refusal("I'm sorry, I don't know that.")
    assert not is_refusal("Standard delivery takes three to five business days.")


# --- clauses ------------------------------------------------------------------------------------


def _split(pieces: list[str], **kwargs: int) -> list[str]:
    splitter = ClauseSplitter(**kwargs)
    out = [clause for piece in pieces for clause in splitter.feed(piece)]
    rest = splitter.flush()
    return [*out, rest] if rest else out


def test_clauses_split_at_sentence_ends_and_long_commas() -> None:
    text = "Sure. Standard shipping costs $4.99, and orders over $1,000 ship free! Anything else? Yes; fine"
    expected = [
        "Sure.",
        "Standard shipping costs $4.99,",
        "and orders over $1,000 ship free!",
        "Anything else?",
        "Yes;",
        "fine",
    ]
    assert _split([text]) == expected
    assert _split(list(text)) == expected  # one character at a time: same cuts
    pieces = ["Standard shipping costs $4", ".", "99", " today."]
    assert _split(pieces) == ["Standard shipping costs $4.99 today."]


def test_clauses_keep_short_comma_phrases_numbers_and_abbreviations() -> None:
    assert _split(["Yes, you can. "]) == ["Yes, you can."]
    assert _split(["Call Dr. Smith at 9 a.m. tomorrow, e.g. by phone."]) == [
        "Call Dr. Smith at 9 a.m. tomorrow,",
        "e.g. by phone.",
    ]
    assert _split(["It is 3.5% of 1,250.75 dollars."]) == ["It is 3.5% of 1,250.75 dollars."]


def test_first_clause_comes_out_before_the_stream_ends() -> None:
    splitter = ClauseSplitter()
    assert splitter.feed("Your order ships today") == []
    assert splitter.feed(".") == []  # "today.5"? the character after the full stop decides
    assert splitter.feed(" It arrives") == ["Your order ships today."]
    assert splitter.flush() == "It arrives"
    assert splitter.flush() == ""


# --- grounding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "Standard shipping costs $4.99.",
        "Shipping is 4.99 dollars.",
        "Orders over $50 ship free.",
        "Orders over 50 dollars ship free.",
        "Standard delivery takes 3 to 5 business days.",
        "You can cancel within one hour of placing your order.",
        "Unopened items can be returned within thirty days for a full refund.",
        "Opened items cannot be returned.",
        "Our line is open Monday to Friday, 9am to 6pm.",
        "The phone line opens at nine a.m. on Monday.",
        "The phone line is open from 9 to 6.",
        "The spring sale ends on the third of March.",
        "Members get ten percent off every order.",
        "Gift cards start at one thousand dollars.",
        "There is no minimum order value.",
    ],
)
def test_supported_answers_pass(answer: str) -> None:
    result = check(answer, SOURCES)
    assert result.ok, result.reason


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("Standard shipping costs $5.99.", "5.99"),  # invented price
        ("Standard shipping costs five dollars.", "five"),  # rounded price is still invented
        ("Orders over forty dollars ship free.", "forty"),
        ("Standard delivery takes 3 to 7 business days.", "7"),
        ("You can cancel within 24 hours.", "24"),
        ("Unopened items can be returned within 60 days.", "60"),
        ("Our phone line is open on Saturday.", "saturday"),  # invented day
        ("Our phone line opens at 10 am.", "10"),  # invented time
        ("Our phone line opens at 9 pm.", "9"),  # wrong half of the day
        ("The spring sale ends on March 4th.", "march"),  # invented date
        ("The spring sale ends in April.", "april"),
        ("Members get 20% off every order.", "20"),  # invented percentage
        ("Opened items can be returned.", "negation"),  # flipped policy
        ("There is a minimum order value.", "negation"),
        ("We offer a lifetime warranty on all products.", "warranty"),  # invented policy
        ("You can return items by mail or in any of our stores.", "stores"),
        ("Call FedEx for the tracking number.", "FedEx"),  # invented name
        (REFUSAL, "nothing"),  # not an answer: the policy falls back
        ("", "nothing"),
    ],
)
def test_unsupported_answers_are_rejected(answer: str, why: str) -> None:
    result = check(answer, SOURCES)
    assert not result.ok
    assert why.lower() in (result.reason + " " + " ".join(result.unsupported)).lower() or why == "nothing"


def test_grounding_reports_what_is_unsupported() -> None:
    result = check("Standard shipping costs $5.99 and takes 8 days.", SOURCES)
    assert not result.ok and result.reason.startswith("unsupported facts")
    assert result.unsupported == ["5.99 dollars", "8"]


def test_grounding_uses_call_facts_anywhere() -> None:
    known = ["The caller's order number is 45712."]
    assert check("Your order 45712 can be cancelled within one hour.", SOURCES, known=known).ok
    assert not check("Your order 45713 can be cancelled within one hour.", SOURCES, known=known).ok
    assert check("Your order 45712 ships free.", SOURCES, known=fact_lines({"order_number": "45712"})).ok
    # Without them, the number is not in the passages.
    assert not check("Your order 45712 can be cancelled within one hour.", SOURCES).ok


@pytest.mark.parametrize(
    "answer",
    [
        "Express delivery takes three to five business days.",  # "express" from the other sentence
        "Standard delivery arrives in one to two days.",
        "Members get 10% off gift cards.",
        "You can cancel an order from the My Orders page by email.",  # "by email" added
    ],
)
def test_facts_mixed_across_sentences_are_rejected(answer: str) -> None:
    assert not check(answer, SOURCES).ok


def test_clauses_may_rest_on_different_sentences() -> None:
    assert check("Standard shipping costs $4.99, and delivery takes 3 to 5 business days.", SOURCES).ok
