"""`Brain.decide` against real parts: a milvus-lite knowledge base of the demo FAQ, the MiniLM
embedder, the built-in intents, VADER sentiment and the slot extractor.

The thresholds are fixed here (answer 0.57, related 0.46, clarify margin 0.15), not read from the
settings, so a recalibration does not move these tests. Where a test depends on a score falling in
a band, it asserts the score first, so a changed embedder or FAQ fails with a message
that says so rather than with a confusing route.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from voicebot.dialogue.memory import Memory
from voicebot.dialogue.policy import (
    DECLINED,
    EMPATHY,
    EMPATHY_BELOW,
    EMPATHY_STRONG,
    GOODBYE,
    HANDOFF,
    HANDOFF_AFTER_FAILURES,
    LLM_FALLBACK,
    NO_ANSWER,
    SLOT_QUESTIONS,
    START_OVER,
    Brain,
    Decision,
    GenerationPlan,
    Thresholds,
)
from voicebot.kb import DEMO_FAQ, KnowledgeBase
from voicebot.nlu.embeddings import Embedder, load_embedder
from voicebot.nlu.intents import IntentClassifier
from voicebot.nlu.sentiment import analyze

THRESHOLDS = Thresholds(answer=0.57, related=0.46, clarify_margin=0.15)
SPOKEN_ORDER = "4 5 7 1 2"

# Two near-duplicate questions with different answers, so they compete for the top spot.
PIN_APP_Q, PIN_APP_A = "How do I reset my PIN?", "Open the app and choose Security to set a new PIN."
PIN_POST_Q, PIN_POST_A = (
    "How do I reset my PIN code?",
    "Call our support line and we will send you a new PIN code by post.",
)
TINY_FAQ = f"""question,answer,category
{PIN_APP_Q},{PIN_APP_A},account
{PIN_POST_Q},{PIN_POST_A},account
What are your opening hours?,We are open from nine to five on weekdays.,contact
"""
TINY_ANSWERS = {PIN_APP_Q: PIN_APP_A, PIN_POST_Q: PIN_POST_A}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder("minilm")


@pytest.fixture(scope="module")
def demo_kb(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Iterator[KnowledgeBase]:
    kb = KnowledgeBase(str(tmp_path_factory.mktemp("policy") / "kb.db"), "kb", embedder, lexical_weight=0.1)
    report = kb.ingest([DEMO_FAQ])
    assert not report.errors, report
    yield kb
    kb.close()


@pytest.fixture(scope="module")
def tiny_kb(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Iterator[KnowledgeBase]:
    folder = tmp_path_factory.mktemp("tiny")
    csv = folder / "tiny.csv"
    csv.write_text(TINY_FAQ, encoding="utf-8")
    kb = KnowledgeBase(str(folder / "kb.db"), "kb", embedder, lexical_weight=0.1)
    report = kb.ingest([csv])
    assert not report.errors, report
    yield kb
    kb.close()


@pytest.fixture(scope="module")
def intents() -> IntentClassifier:
    return IntentClassifier.load(None)


@pytest.fixture(scope="module")
def brain(demo_kb: KnowledgeBase, intents: IntentClassifier) -> Brain:
    return Brain(demo_kb, intents, THRESHOLDS, llm_enabled=False)


@pytest.fixture(scope="module")
def llm_brain(demo_kb: KnowledgeBase, intents: IntentClassifier) -> Brain:
    return Brain(demo_kb, intents, THRESHOLDS, llm_enabled=True)


@pytest.fixture
def memory() -> Memory:
    return Memory()


def say(brain: Brain, memory: Memory, *turns: str) -> list[Decision]:
    """Each caller turn in order; the caller's side (add_turn) as the dialogue loop does it."""
    decisions = []
    for text in turns:
        decision = brain.decide(text, memory)
        memory.add_turn(text, decision.reply)
        decisions.append(decision)
    return decisions


def top_score(decision: Decision) -> float:
    assert decision.retrieved, f"no hits for route {decision.route}: {decision.reason}"
    return float(decision.retrieved[0]["score"])


# ---------------------------------------------------------------- knowledge-base answers


def test_paraphrase_gets_the_faq_answer_with_scored_hits(brain: Brain, memory: Memory) -> None:
    decision = brain.decide("I forgot my password, what do I do?", memory)
    assert decision.route == "kb_answer", decision.reason
    assert decision.reply.startswith("Choose Forgot password on the sign-in page")
    assert decision.prefix == ""
    assert not decision.end_call and decision.generate is None
    top = decision.retrieved[0]
    assert top["question"] == "How do I reset my password?"
    assert top["passage"] == decision.reply
    for hit in decision.retrieved:
        assert {"id", "score", "vector_score", "lexical_score", "question", "passage"} <= hit.keys()
        assert 0.0 <= hit["lexical_score"] <= 1.0
    assert top["score"] >= THRESHOLDS.answer
    assert [h["score"] for h in decision.retrieved] == sorted(
        (h["score"] for h in decision.retrieved), reverse=True
    )
    assert f">= {THRESHOLDS.answer}" in decision.reason
    assert memory.last_route == "kb_answer" and memory.last_reply == decision.reply
    assert memory.failed_turns == 0


# ---------------------------------------------------------------- slots


def test_answer_needing_an_order_number_asks_then_uses_a_bare_number(brain: Brain, memory: Memory) -> None:
    asked, answered = say(brain, memory, "When will my order arrive?", "45712")
    assert asked.route == "ask_slot", asked.reason
    assert asked.reply == SLOT_QUESTIONS["order_number"]
    assert "order number" in asked.reason
    assert asked.retrieved[0]["question"] == "When will my order arrive?"

    # "45712" alone is only an order number because the bot just asked for one (expect).
    assert answered.route == "kb_answer", answered.reason
    assert answered.slots == {"order_number": "45712"}
    assert memory.slots["order_number"] == "45712"
    assert SPOKEN_ORDER in answered.reply  # read digit by digit
    assert "{order_number}" not in answered.reply
    assert "pending question" in answered.reason
    assert answered.retrieved[0]["question"] == "When will my order arrive?"
    assert "pending" not in memory.extra


def test_order_number_given_first_is_acknowledged_then_used(brain: Brain, memory: Memory) -> None:
    ack, answered = say(brain, memory, "my order number is 45712", "when will my order arrive")
    assert ack.route == "slot_ack", ack.reason
    assert ack.slots == {"order_number": "45712"}
    assert memory.slots == {"order_number": "45712"}
    assert SPOKEN_ORDER in ack.reply and "order number" in ack.reply

    assert answered.route == "kb_answer", answered.reason
    assert answered.reply.startswith(f"For order {SPOKEN_ORDER},")


def test_start_over_clears_slots_and_pending_question(brain: Brain, memory: Memory) -> None:
    say(brain, memory, "my order number is 45712")
    assert memory.slots
    restart, asked = say(brain, memory, "start over", "When will my order arrive?")
    assert restart.route == "start_over"
    assert restart.reply == START_OVER
    assert asked.route == "ask_slot", "the order number should have been forgotten"
    assert "order_number" not in memory.slots

    # A pending question is dropped too: a bare number is no longer an order number.
    say(brain, memory, "start over")
    assert memory.slots == {} and "pending" not in memory.extra
    bare = brain.decide("45712", memory)
    assert bare.slots == {}
    assert bare.route == "no_answer", bare.reason


# ---------------------------------------------------------------- failures and handoff


def test_out_of_scope_twice_hands_off(brain: Brain, memory: Memory) -> None:
    first, second = say(brain, memory, "What's the weather like today?", "Who won the football game?")
    assert first.route == "no_answer", first.reason
    assert first.reply == NO_ANSWER
    assert top_score(first) < THRESHOLDS.related
    assert second.route == "handoff", second.reason
    assert "2 failed turns" in second.reason
    assert second.reply == HANDOFF_AFTER_FAILURES
    assert memory.failed_turns == 0  # a handoff resets the streak


def test_yes_after_no_answer_hands_off(brain: Brain, memory: Memory) -> None:
    _, yes = say(brain, memory, "What's the weather like today?", "yes")
    assert yes.route == "handoff", yes.reason
    assert "accepted" in yes.reason
    assert yes.reply == HANDOFF


def test_no_after_no_answer_declines_the_handoff(brain: Brain, memory: Memory) -> None:
    _, no = say(brain, memory, "What's the weather like today?", "no")
    assert no.route == "declined_handoff", no.reason
    assert no.reply == DECLINED
    assert memory.failed_turns == 0
    # The streak was broken, so one more miss is a plain no_answer again, not a handoff.
    again = brain.decide("Who won the football game?", memory)
    assert again.route == "no_answer", again.reason


def test_yes_without_an_offer_is_not_a_handoff(brain: Brain, memory: Memory) -> None:
    _, yes = say(brain, memory, "How long does delivery take?", "yes")
    assert yes.route != "handoff", yes.reason


def test_asking_for_a_human_hands_off(brain: Brain, memory: Memory) -> None:
    decision = brain.decide("can I talk to a human", memory)
    assert decision.route == "handoff"
    assert "asked for a human" in decision.reason
    assert decision.reply == HANDOFF
    assert decision.intent.name == "human"


def test_angry_caller_is_handed_off_with_empathy(brain: Brain, memory: Memory) -> None:
    decision = brain.decide("This is terrible, I'm so angry, your service is the worst, awful!", memory)
    assert decision.route == "handoff"
    assert "sentiment" in decision.reason
    assert decision.prefix == EMPATHY_STRONG
    assert decision.sentiment is not None and decision.sentiment.score <= brain.sentiment_handoff


@pytest.mark.parametrize(
    "text",
    [
        "I'm a little worried, how long does delivery take?",  # mildly negative: no empathy
        "I'm annoyed, how long does delivery take?",  # negative enough: empathy
    ],
)
def test_empathy_prefix_only_below_the_threshold(brain: Brain, memory: Memory, text: str) -> None:
    score = analyze(text).score
    assert brain.sentiment_handoff < score < 0, f"{text!r} should be negative but not a handoff ({score})"
    decision = brain.decide(text, memory)
    assert decision.route == "kb_answer", decision.reason
    assert decision.retrieved[0]["question"] == "How long does delivery take?"
    assert decision.prefix == (EMPATHY if score <= EMPATHY_BELOW else "")


def test_both_sides_of_the_empathy_threshold_are_covered() -> None:
    scores = [
        analyze("I'm a little worried, how long does delivery take?").score,
        analyze("I'm annoyed, how long does delivery take?").score,
    ]
    assert scores[0] > EMPATHY_BELOW >= scores[1], scores


# ---------------------------------------------------------------- built-in intents


def test_repeat_says_the_last_reply_again(brain: Brain, memory: Memory) -> None:
    nothing = brain.decide("can you repeat that", memory)
    assert nothing.route == "repeat" and "nothing" in nothing.reason

    answer, again = say(brain, memory, "How much does shipping cost?", "can you repeat that")
    assert answer.route == "kb_answer", answer.reason
    assert again.route == "repeat"
    assert again.reply == answer.reply == memory.last_reply
    assert memory.last_route == "repeat"


def test_goodbye_ends_the_call(brain: Brain, memory: Memory) -> None:
    decision = brain.decide("goodbye", memory)
    assert decision.route == "goodbye"
    assert decision.reply == GOODBYE
    assert decision.end_call is True


# ---------------------------------------------------------------- related but not close: generation

# "where is my parcel" is related to the FAQ (returns, tracking) but matches no question well.
BAND_QUESTION = "where is my parcel"


def test_related_question_is_generated_when_an_llm_is_configured(llm_brain: Brain, memory: Memory) -> None:
    decision = llm_brain.decide(BAND_QUESTION, memory)
    score = top_score(decision)
    assert THRESHOLDS.related <= score < THRESHOLDS.answer, f"{BAND_QUESTION!r} scored {score}"
    assert decision.route == "generated", decision.reason
    assert decision.reply == ""
    plan = decision.generate
    assert isinstance(plan, GenerationPlan)
    assert plan.question == BAND_QUESTION
    related = [h for h in decision.retrieved if h["score"] >= THRESHOLDS.related]
    assert plan.passages == [h["passage"] for h in related]
    assert plan.fallback_route == "kb_fallback"
    assert plan.fallback_reply == decision.retrieved[0]["passage"]
    assert plan.facts == {} and plan.history == []
    assert "between" in decision.reason
    assert memory.last_route == ""  # settled later, once the speech is known


def test_related_question_without_an_llm_is_no_answer(brain: Brain, memory: Memory) -> None:
    decision = brain.decide(BAND_QUESTION, memory)
    assert THRESHOLDS.related <= top_score(decision) < THRESHOLDS.answer
    assert decision.route == "no_answer", decision.reason
    assert "no LLM configured" in decision.reason
    assert decision.reply == NO_ANSWER and decision.generate is None


def test_generation_plan_carries_facts_and_history(
    demo_kb: KnowledgeBase, intents: IntentClassifier, memory: Memory
) -> None:
    # Thresholds that put every related hit in the generation band, whatever the exact scores.
    wide = Brain(
        demo_kb, intents, Thresholds(answer=0.99, related=0.3, clarify_margin=0.15), llm_enabled=True
    )
    say(wide, memory, "my order number is 45712")
    decision = wide.decide("When will my order arrive?", memory)
    assert decision.route == "generated", decision.reason
    plan = decision.generate
    assert plan is not None
    assert plan.facts == {"order number": "45712"}
    assert plan.history == [("my order number is 45712", memory.turns[0][1])]
    assert all("{order_number}" not in p for p in plan.passages)
    assert any(SPOKEN_ORDER in p for p in plan.passages)
    assert plan.fallback_route == "kb_fallback"


def test_generation_without_a_needed_slot_falls_back_to_an_apology(
    demo_kb: KnowledgeBase, intents: IntentClassifier, memory: Memory
) -> None:
    wide = Brain(
        demo_kb, intents, Thresholds(answer=0.99, related=0.3, clarify_margin=0.15), llm_enabled=True
    )
    decision = wide.decide("When will my order arrive?", memory)
    assert decision.route == "generated", decision.reason
    assert decision.retrieved[0]["question"] == "When will my order arrive?"
    plan = decision.generate
    assert plan is not None
    # The best passage needs the order number, which the call has not given: never read "{order_number}".
    assert plan.fallback_route == "llm_failed"
    assert plan.fallback_reply == LLM_FALLBACK


# ---------------------------------------------------------------- clarify


@pytest.fixture
def tiny_brain(tiny_kb: KnowledgeBase, intents: IntentClassifier) -> Brain:
    return Brain(tiny_kb, intents, THRESHOLDS, llm_enabled=False)


def ask_which(tiny_brain: Brain, memory: Memory) -> tuple[str, str]:
    """Ask the ambiguous question; (first choice's question, second choice's question)."""
    decision = tiny_brain.decide("how do I reset my PIN", memory)
    assert decision.route == "clarify", decision.reason
    first, second = decision.retrieved[0]["question"], decision.retrieved[1]["question"]
    assert {first, second} == set(TINY_ANSWERS)
    assert decision.reply == f"Do you mean {first[:1].lower()}{first[1:].rstrip('?')}, or " + (
        f"{second[:1].lower()}{second[1:].rstrip('?')}?"
    )
    assert "compete" in decision.reason
    memory.add_turn("how do I reset my PIN", decision.reply)
    return first, second


@pytest.mark.parametrize("pick", ["the second", "the latter", "second"])
def test_clarify_then_pick_the_second(tiny_brain: Brain, memory: Memory, pick: str) -> None:
    _, second = ask_which(tiny_brain, memory)
    decision = tiny_brain.decide(pick, memory)
    assert decision.route == "kb_answer", decision.reason
    assert decision.reply == TINY_ANSWERS[second]
    assert "picked" in decision.reason
    assert "clarify" not in memory.extra


def test_clarify_then_pick_the_first(tiny_brain: Brain, memory: Memory) -> None:
    first, _ = ask_which(tiny_brain, memory)
    decision = tiny_brain.decide("the first one", memory)
    assert decision.route == "kb_answer", decision.reason
    assert decision.reply == TINY_ANSWERS[first]


@pytest.mark.parametrize("pick", ["the second one", "the other one", "the PIN code one"])
def test_clarify_then_pick_the_second_one(tiny_brain: Brain, memory: Memory, pick: str) -> None:
    _, second = ask_which(tiny_brain, memory)
    decision = tiny_brain.decide(pick, memory)
    assert decision.route == "kb_answer", decision.reason
    assert decision.reply == TINY_ANSWERS[second]


def test_demo_faq_has_a_competing_pair(brain: Brain, memory: Memory) -> None:
    decision = brain.decide("can I change my order", memory)
    assert decision.route == "clarify", decision.reason
    assert decision.reply.startswith("Do you mean ") and decision.reply.endswith("?")
    top, rival = decision.retrieved[0]["score"], decision.retrieved[1]["score"]
    assert rival >= THRESHOLDS.answer and top - rival < THRESHOLDS.clarify_margin
