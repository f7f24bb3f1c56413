"""The dialogue policy: for one caller turn, pick a route and say why.

Routes, in the order they are considered:

- ``handoff``: the caller asked for a human, accepted the offer of one, is strongly negative, or the
  bot failed to help ``handoff_after_failures`` turns in a row.
- ``repeat``, ``goodbye``, ``thanks``, ``declined_handoff``: built-in intents with a fixed reply.
- ``ask_slot`` / ``slot_ack``: the best answer needs a slot (``{order_number}`` in its text) the call
  has not given yet, so the bot asks for it; or the caller gave one without a question.
- ``clarify``: two different answers compete, so the bot asks which one the caller means.
- ``kb_answer``: the top knowledge-base hit clears the direct-answer threshold.
- ``generated``: the hits are related but not close enough; the LLM answers from them, and each clause
  is spoken only if the grounding check passes (see `voicebot.dialogue.generation`). When it cannot, the turn
  falls back to the best hit (``kb_fallback``) or to ``no_answer``.
- ``no_answer``: nothing relevant; an apology and an offer of a human. Never an invented answer.

`Brain.decide` is synchronous and fast (embedding, intent, retrieval: tens of milliseconds); it runs in
a worker thread. Generation is asynchronous and lives in `voicebot.dialogue.generation`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from voicebot.dialogue.memory import Memory
from voicebot.nlu.builtin_intents import IntentResult
from voicebot.nlu.intents import IntentClassifier
from voicebot.nlu.sentiment import Sentiment, analyze
from voicebot.nlu.slots import extract_slots

NO_ANSWER = (
    "I'm sorry, I don't have information about that. Would you like me to connect you with a human agent?"
)
HANDOFF = "Of course. I'm transferring you to a human agent now. Please hold."
HANDOFF_AFTER_FAILURES = (
    "I'm sorry I couldn't help with that. Let me transfer you to a human agent. Please hold."
)
HANDOFF_FAILED = (
    "I'm sorry, I couldn't reach an agent right now. I can keep helping you here, or you can call back later."
)
EMPATHY = "I'm sorry to hear that."
EMPATHY_STRONG = "I'm really sorry about this experience."
GOODBYE = "Thank you for calling. Goodbye!"
THANKS = "You're welcome. Is there anything else I can help you with?"
DECLINED = "All right. What else can I help you with?"
NOTHING_TO_REPEAT = "I haven't said anything yet. How can I help you today?"
WAIT = "Sure, take your time. I'm here when you're ready."
START_OVER = "All right, let's start over. How can I help you?"
LLM_FALLBACK = (
    "I'm sorry, I can't answer that right now. Would you like me to connect you with a human agent?"
)

#: A caller turn this negative gets an empathetic first sentence. VADER's own "negative" label
#: starts at -0.05, which an ASR slip ("how long does delivery pay?") reaches.
EMPATHY_BELOW = -0.3
#: Routes after which a "yes" means "yes, give me a human".
OFFERS_HUMAN = frozenset({"no_answer", "llm_failed"})
#: Routes that count as a turn the bot could not help with.
FAILED_ROUTES = frozenset({"no_answer", "llm_failed"})

SLOT_QUESTIONS = {
    "order_number": "Sure. What is your order number?",
    "account_number": "Sure. What is your account number?",
    "reference_number": "Sure. What is the reference number?",
    "phone_number": "Sure. What phone number should I use?",
    "date": "Sure. Which date do you mean?",
    "name": "Sure. May I have your name, please?",
}
SLOT_NAMES = {
    "order_number": "order number",
    "account_number": "account number",
    "reference_number": "reference number",
    "phone_number": "phone number",
    "date": "date",
    "name": "name",
}
# Slots read back digit by digit, so "45712" is not spoken as "forty-five thousand...".
_SPELLED_SLOTS = frozenset({"order_number", "account_number", "reference_number", "phone_number"})
_ACKNOWLEDGED = frozenset(_SPELLED_SLOTS | {"name"})
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# Checked in this order: "the second one" is the second choice, whatever "one" says.
_ORDINAL = (("second", 1), ("other", 1), ("latter", 1), ("last", 1), ("first", 0), ("former", 0))
_ORDINAL_WEAK = (("two", 1), ("one", 0))
_PICK_MAX_WORDS = 6  # a longer reply is a new question, not a pick


@dataclass(frozen=True)
class Thresholds:
    answer: float
    related: float
    clarify_margin: float


@dataclass
class GenerationPlan:
    """What the LLM gets, and what to say when it cannot answer in time or grounded."""

    question: str
    passages: list[str]
    history: list[tuple[str, str]]
    facts: dict[str, str]
    fallback_route: str
    fallback_reply: str


@dataclass
class Decision:
    route: str
    reason: str
    reply: str
    retrieved: list[dict[str, Any]] = field(default_factory=list)
    intent: IntentResult = field(default_factory=lambda: IntentResult("", 0.0, "none"))
    sentiment: Sentiment | None = None
    slots: dict[str, str] = field(default_factory=dict)  # slots heard in this turn
    prefix: str = ""  # empathetic words spoken before the reply
    generate: GenerationPlan | None = None
    end_call: bool = False


def speakable(slot: str, value: str) -> str:
    if slot in _SPELLED_SLOTS and value.isalnum():
        return " ".join(value)
    return value


def fill(template: str, slots: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: speakable(m.group(1), slots.get(m.group(1), m.group(0))), template)


def needed_slots(answer: str) -> list[str]:
    return [name for name in _PLACEHOLDER.findall(answer) if name in SLOT_QUESTIONS]


def _hit_info(hit: Any) -> dict[str, Any]:
    return {
        "id": hit.id,
        "score": round(float(hit.score), 4),
        "vector_score": round(float(getattr(hit, "vector_score", hit.score)), 4),
        "lexical_score": round(float(getattr(hit, "lexical_score", 0.0)), 4),
        "question": hit.question,
        "passage": hit.answer,
    }


def _as_question(text: str) -> str:
    text = text.strip().rstrip("?.!").strip()
    return text[:1].lower() + text[1:] if text[:2] != "I " else text


class Brain:
    """Decides each caller turn from intent, sentiment, slots, retrieval and the call's memory."""

    def __init__(
        self,
        kb: Any,
        intents: IntentClassifier,
        thresholds: Thresholds,
        *,
        llm_enabled: bool,
        sentiment_handoff: float = -0.6,
        handoff_after_failures: int = 2,
    ) -> None:
        self.kb = kb
        self.intents = intents
        self.thresholds = thresholds
        self.llm_enabled = llm_enabled
        self.sentiment_handoff = sentiment_handoff
        self.handoff_after_failures = handoff_after_failures

    # ------------------------------------------------------------------ entry point

    def decide(self, text: str, memory: Memory) -> Decision:
        sentiment = analyze(text)
        pending = memory.extra.get("pending")
        # A bare "45712" right after "what is your order number?" is the order number.
        slots = extract_slots(text, expect=pending["needs"][0] if pending else None)
        memory.slots.update(slots)
        vector = self._embed(text)
        intent = self.intents.classify(text, embedding=vector if self._shares_embedder() else None)
        decision = self._control(intent, sentiment, memory) or self._answer(text, vector, slots, memory)
        decision.intent, decision.sentiment, decision.slots = intent, sentiment, slots
        if decision.route in FAILED_ROUTES:
            decision = self._maybe_escalate(decision, memory)
        if sentiment.score <= EMPATHY_BELOW and decision.route != "handoff":
            decision.prefix = EMPATHY
        self._remember(decision, memory)
        return decision

    def phrases(self) -> list[str]:
        """Fixed replies, so the TTS cache can hold them ready."""
        fixed = [NO_ANSWER, HANDOFF, HANDOFF_AFTER_FAILURES, HANDOFF_FAILED, EMPATHY, EMPATHY_STRONG]
        fixed += [GOODBYE, THANKS, DECLINED, NOTHING_TO_REPEAT, LLM_FALLBACK, WAIT, START_OVER]
        return fixed + list(SLOT_QUESTIONS.values())

    # ------------------------------------------------------------------ control intents

    def _control(self, intent: IntentResult, sentiment: Sentiment, memory: Memory) -> Decision | None:
        name = intent.name
        if name == "human":
            return Decision("handoff", f"caller asked for a human (intent {intent.confidence:.2f})", HANDOFF)
        if sentiment.score <= self.sentiment_handoff:
            decision = Decision("handoff", f"strongly negative sentiment ({sentiment.score:.2f})", HANDOFF)
            decision.prefix = EMPATHY_STRONG
            return decision
        if name == "yes" and memory.last_route in OFFERS_HUMAN:
            return Decision("handoff", "caller accepted the offer of a human", HANDOFF)
        if name == "no" and memory.last_route in OFFERS_HUMAN:
            return Decision("declined_handoff", "caller declined the offer of a human", DECLINED)
        if name == "repeat":
            if memory.last_reply:
                return Decision("repeat", "caller asked to hear the last answer again", memory.last_reply)
            return Decision("repeat", "nothing said yet to repeat", NOTHING_TO_REPEAT)
        if name == "goodbye":
            return Decision("goodbye", "caller said goodbye", GOODBYE, end_call=True)
        if name == "thanks":
            return Decision("thanks", "caller said thanks", THANKS)
        if name == "wait":
            return Decision("wait", "caller asked the bot to wait", WAIT)
        if name == "start_over":
            memory.slots.clear()
            memory.extra.clear()
            return Decision(
                "start_over", "caller asked to start over: slots and pending questions cleared", START_OVER
            )
        return None

    # ------------------------------------------------------------------ answers

    def _answer(self, text: str, vector: Any, slots: dict[str, str], memory: Memory) -> Decision:
        pending = memory.extra.get("pending")
        if pending and set(pending["needs"]) <= set(memory.slots):
            memory.extra.pop("pending", None)
            reply = fill(pending["answer"], memory.slots)
            return Decision(
                "kb_answer",
                f"answered the pending question with the {_names(slots)}",
                reply,
                pending.get("retrieved", []),
            )
        chosen = self._clarified(text, memory)
        if chosen is not None:
            return self._kb_reply(chosen, [_hit_info(chosen)], memory, "caller picked one of the choices")
        hits = self.kb.search(text, k=3, vector=vector)
        retrieved = [_hit_info(h) for h in hits]
        top = hits[0] if hits else None
        t = self.thresholds
        if (top is None or top.score < t.answer) and memory.turns:
            hits, retrieved, top = self._with_context(text, memory, hits, retrieved, top)
        # An identifier on its own ("my order number is 45712") is acknowledged; a date inside a
        # question ("what's the weather tomorrow?") is not a reason to skip answering it.
        given = {k: v for k, v in slots.items() if k in _ACKNOWLEDGED}
        if given and (top is None or top.score < t.answer):
            return Decision("slot_ack", f"caller gave the {_names(given)}", self._ack(given), retrieved)
        if top is None:
            return Decision("no_answer", "the knowledge base is empty", NO_ANSWER, retrieved)
        rival = self._rival(hits)
        if rival is not None:
            memory.extra["clarify"] = [_hit_dict(top), _hit_dict(rival)]
            reply = f"Do you mean {_as_question(top.question)}, or {_as_question(rival.question)}?"
            reason = f"top two answers compete ({top.score:.3f} vs {rival.score:.3f} < {t.clarify_margin})"
            return Decision("clarify", reason, reply, retrieved)
        if top.score >= t.answer:
            return self._kb_reply(top, retrieved, memory, f"top score {top.score:.3f} >= {t.answer}")
        if top.score >= t.related and self.llm_enabled:
            return self._generation(text, hits, retrieved, memory)
        if top.score >= t.related:
            reason = f"top score {top.score:.3f} below {t.answer} and no LLM configured"
            return Decision("no_answer", reason, NO_ANSWER, retrieved)
        return Decision("no_answer", f"top score {top.score:.3f} < {t.related}", NO_ANSWER, retrieved)

    def _kb_reply(self, hit: Any, retrieved: list[dict[str, Any]], memory: Memory, reason: str) -> Decision:
        missing = [name for name in needed_slots(hit.answer) if name not in memory.slots]
        if missing:
            memory.extra["pending"] = {"answer": hit.answer, "needs": missing, "retrieved": retrieved}
            return Decision(
                "ask_slot",
                f"{reason}; the answer needs the {SLOT_NAMES[missing[0]]}",
                SLOT_QUESTIONS[missing[0]],
                retrieved,
            )
        return Decision("kb_answer", reason, fill(hit.answer, memory.slots), retrieved)

    def _generation(
        self, text: str, hits: Sequence[Any], retrieved: list[dict[str, Any]], memory: Memory
    ) -> Decision:
        t = self.thresholds
        related = [h for h in hits if h.score >= t.related]
        plan = GenerationPlan(
            question=text,
            passages=[fill(h.answer, memory.slots) for h in related],
            history=list(memory.turns),
            facts={SLOT_NAMES.get(k, k): v for k, v in memory.slots.items()},
            fallback_route="kb_fallback",
            fallback_reply=fill(related[0].answer, memory.slots),
        )
        if needed_slots(related[0].answer) and not set(needed_slots(related[0].answer)) <= set(memory.slots):
            plan.fallback_route, plan.fallback_reply = "llm_failed", LLM_FALLBACK
        reason = (
            f"top score {hits[0].score:.3f} between {t.related} and {t.answer}: generating from "
            f"{len(related)} passage(s)"
        )
        return Decision("generated", reason, "", retrieved, generate=plan)

    def _rival(self, hits: Sequence[Any]) -> Any | None:
        """The second hit, when it also clears the answer threshold with a different answer, too close."""
        t = self.thresholds
        if len(hits) < 2 or hits[1].score < t.answer:
            return None
        top, second = hits[0], hits[1]
        if _norm(top.answer) == _norm(second.answer) or top.score - second.score >= t.clarify_margin:
            return None
        return second

    def _clarified(self, text: str, memory: Memory) -> Any | None:
        choices = memory.extra.pop("clarify", None)
        if not choices:
            return None
        said = _norm(text).split()
        if len(said) > _PICK_MAX_WORDS:
            return None  # a new question, not a pick
        words = set(said)
        for word, index in _ORDINAL:
            if word in words:
                return _HitView(**choices[index])
        # The caller repeated words of one choice more than of the other ("the PIN code one").
        overlap = [len(words & set(_norm(c["question"]).split()) - _STOP) for c in choices]
        if overlap[0] != overlap[1] and max(overlap) >= 1:
            return _HitView(**choices[overlap.index(max(overlap))])
        for word, index in _ORDINAL_WEAK:
            if word in words:
                return _HitView(**choices[index])
        return None

    def _with_context(
        self, text: str, memory: Memory, hits: list[Any], retrieved: list[dict[str, Any]], top: Any
    ) -> tuple[list[Any], list[dict[str, Any]], Any]:
        """A follow-up ("and how much is it?") searched together with the previous caller turn."""
        previous = memory.turns[-1][0]
        combined = self.kb.search(f"{previous} {text}", k=3)
        if (
            combined
            and combined[0].score >= self.thresholds.answer
            and (top is None or combined[0].score > top.score)
        ):
            return combined, [_hit_info(h) | {"with_context": True} for h in combined], combined[0]
        return hits, retrieved, top

    def _ack(self, slots: dict[str, str]) -> str:
        said = ", ".join(f"{SLOT_NAMES[k]} {speakable(k, v)}" for k, v in slots.items() if k in SLOT_NAMES)
        return f"Thanks, I have your {said}. What would you like to know?"

    # ------------------------------------------------------------------ bookkeeping

    def _maybe_escalate(self, decision: Decision, memory: Memory) -> Decision:
        if memory.failed_turns + 1 >= self.handoff_after_failures:
            escalated = Decision(
                "handoff",
                f"{memory.failed_turns + 1} failed turns in a row ({decision.reason})",
                HANDOFF_AFTER_FAILURES,
                decision.retrieved,
            )
            escalated.intent, escalated.sentiment, escalated.slots = (
                decision.intent,
                decision.sentiment,
                decision.slots,
            )
            return escalated
        return decision

    def _remember(self, decision: Decision, memory: Memory) -> None:
        if decision.route != "generated":  # a generated turn is settled when its speech is known
            settle(memory, decision.route, decision.reply)

    def _embed(self, text: str) -> Any:
        embed = getattr(self.kb, "embed_query", None)
        return embed(text) if embed else None

    def _shares_embedder(self) -> bool:
        from voicebot.nlu.embeddings import embedder_name

        ours = self.intents.embedder_name
        return ours is not None and ours == embedder_name(getattr(self.kb, "embedder", None))


def settle(memory: Memory, route: str, reply: str) -> None:
    """Record the outcome of a turn in the call's memory (failure streak, what to repeat)."""
    memory.failed_turns = memory.failed_turns + 1 if route in FAILED_ROUTES else 0
    if route == "handoff":
        memory.failed_turns = 0
    memory.last_route = route
    if reply and route != "repeat":
        memory.last_reply = reply


@dataclass(frozen=True)
class _HitView:
    id: Any
    question: str
    answer: str
    score: float


def _hit_dict(hit: Any) -> dict[str, Any]:
    return {"id": hit.id, "question": hit.question, "answer": hit.answer, "score": float(hit.score)}


def _names(slots: dict[str, str]) -> str:
    return " and ".join(SLOT_NAMES.get(k, k) for k in slots) or "details"


_PUNCT = str.maketrans("", "", string.punctuation)
_STOP = frozenset(
    "a an the i my me to do does is it of for and or can how what you your we in on".split()  # noqa: SIM905
)


def _norm(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())
