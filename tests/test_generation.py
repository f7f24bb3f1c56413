"""`speak_generated`: clause-by-clause grounding, deadlines and fallbacks of a generated answer.

The LLM edge here is `ScriptedBackend`, a small async backend defined below: it stands in for the
model so that the grounding and deadline logic can be driven deterministically (which pieces come,
how late, and where the stream breaks). The real backends are tested against llama_cpp.server in
test_llm_backends.py; the grounding check, the clause splitter and the prompt are the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from llm import STOP, LLMError
from voicebot.dialogue.generation import GenerationOutcome, speak_generated
from voicebot.dialogue.policy import GenerationPlan

DELIVERY = (
    "Standard delivery takes three to five business days. "
    "Express delivery arrives in one to two business days."
)
SHIPPING = (
    "Standard shipping costs four dollars and ninety-nine cents, and it is free on orders over fifty "
    "dollars. Express shipping costs twelve dollars."
)
FALLBACK = "Standard delivery takes three to five business days."
STANDARD = "Standard delivery takes three to five business days."
EXPRESS = "Express delivery arrives in one to two business days."
INVENTED = "Shipping costs seven dollars."
DEADLINE = 0.3


@dataclass
class ScriptedBackend:
    """Yields `pieces` in order, each after its delay; then raises `error`, if given."""

    pieces: Sequence[str]
    delays: Sequence[float] = ()
    error: LLMError | None = None
    name: str = "scripted"
    prompts: list[str] = field(default_factory=list)
    calls: list[dict[str, object]] = field(default_factory=list)
    served: int = 0
    closed: bool = False

    async def stream(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = ()) -> AsyncIterator[str]:
        self.prompts.append(prompt)
        self.calls.append({"max_tokens": max_tokens, "stop": tuple(stop)})
        try:
            for i, piece in enumerate(self.pieces):
                delay = self.delays[i] if i < len(self.delays) else 0.0
                if delay:
                    await asyncio.sleep(delay)
                self.served += 1
                yield piece
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True

    async def aclose(self) -> None:
        return None


def plan(**overrides: object) -> GenerationPlan:
    values: dict[str, object] = {
        "question": "how long will my parcel take",
        "passages": [DELIVERY, SHIPPING],
        "history": [],
        "facts": {},
        "fallback_route": "kb_fallback",
        "fallback_reply": FALLBACK,
    }
    values.update(overrides)
    return GenerationPlan(**values)  # type: ignore[arg-type]


def words(text: str) -> list[str]:
    """A sentence cut the way a tokenizer streams it: word by word, each with its leading space."""
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


async def run(
    backend: ScriptedBackend,
    the_plan: GenerationPlan | None = None,
    *,
    deadline_s: float = DEADLINE,
    max_tokens: int = 60,
) -> tuple[list[str], GenerationOutcome, float]:
    outcome = GenerationOutcome()
    started = time.monotonic()
    said = [
        text
        async for text in speak_generated(
            backend, the_plan or plan(), outcome, deadline_s=deadline_s, max_tokens=max_tokens
        )
    ]
    return said, outcome, time.monotonic() - started


# ---------------------------------------------------------------- grounded answers


async def test_grounded_answer_streams_clause_by_clause() -> None:
    pieces = [*words(STANDARD), " ", *words(EXPRESS)]
    backend = ScriptedBackend(pieces, delays=[0.01] * len(pieces))
    said, outcome, _ = await run(backend, max_tokens=42)

    assert said == [STANDARD, EXPRESS]
    assert outcome.route == "generated"
    assert outcome.spoken == said
    assert outcome.reason == "2 grounded clause(s)"
    assert outcome.tokens == len(pieces)
    assert outcome.first_token_s is not None and 0.0 < outcome.first_token_s < DEADLINE
    assert outcome.generation_s >= outcome.first_token_s
    metrics = outcome.metrics()
    assert metrics["llm_tokens"] == len(pieces) and "llm_first_token" in metrics
    assert outcome.tokens_per_s is not None and outcome.tokens_per_s > 0

    # The prompt is the grounded few-shot prompt of this plan, with the phone stop sequences.
    assert backend.calls == [{"max_tokens": 42, "stop": STOP}]
    prompt = backend.prompts[0]
    assert DELIVERY in prompt and "Caller: how long will my parcel take" in prompt
    assert prompt.endswith("Agent:")
    assert backend.closed


async def test_first_clause_is_yielded_before_the_rest_arrives() -> None:
    # Speech must start at the first grounded clause, not when the whole answer is in.
    backend = ScriptedBackend(
        [STANDARD, " Express", " delivery arrives in one to two business days."], [0, 0, 0.2]
    )
    outcome = GenerationOutcome()
    started = time.monotonic()
    stream = speak_generated(backend, plan(), outcome, deadline_s=DEADLINE, max_tokens=60)
    first = await anext(stream)
    assert first == STANDARD
    assert time.monotonic() - started < 0.15
    rest = [text async for text in stream]
    assert rest == [EXPRESS]
    assert outcome.route == "generated"


async def test_a_filler_clause_is_skipped_silently() -> None:
    backend = ScriptedBackend(["Sure.", " ", STANDARD])
    said, outcome, _ = await run(backend)
    assert said == [STANDARD]
    assert outcome.route == "generated"
    assert outcome.reason == "1 grounded clause(s)"


async def test_only_filler_falls_back() -> None:
    said, outcome, _ = await run(ScriptedBackend(["Sure."]))
    assert said == [FALLBACK]
    assert outcome.route == "kb_fallback"
    assert "the model gave no answer" in outcome.reason
    assert outcome.spoken == []


async def test_known_facts_ground_a_clause_with_the_order_number() -> None:
    clause = "Order 45712 takes three to five business days."
    with_facts = plan(facts={"order number": "45712"})
    said, outcome, _ = await run(ScriptedBackend([clause]), with_facts)
    assert said == [clause]
    assert outcome.route == "generated"

    # Without the call's facts the same clause carries a number the passages do not hold.
    said, outcome, _ = await run(ScriptedBackend([clause]), plan())
    assert said == [FALLBACK]
    assert outcome.route == "kb_fallback"
    assert "not grounded" in outcome.reason and "45712" in outcome.reason


# ---------------------------------------------------------------- not grounded


async def test_invented_price_falls_back_to_the_plan_reply() -> None:
    backend = ScriptedBackend([*words(INVENTED), " ", *words(STANDARD)])
    said, outcome, _ = await run(backend)
    assert said == [FALLBACK]
    assert outcome.route == "kb_fallback"
    assert "not grounded" in outcome.reason and "seven dollars" in outcome.reason
    assert outcome.spoken == []
    assert backend.closed  # generation stopped
    assert backend.served < len(backend.pieces)


async def test_fallback_route_and_reply_come_from_the_plan() -> None:
    apology = plan(fallback_route="llm_failed", fallback_reply="Sorry, I can't answer that right now.")
    said, outcome, _ = await run(ScriptedBackend([INVENTED]), apology)
    assert said == ["Sorry, I can't answer that right now."]
    assert outcome.route == "llm_failed"


async def test_invented_second_clause_stops_after_the_first() -> None:
    backend = ScriptedBackend([STANDARD, " ", INVENTED, " ", EXPRESS])
    said, outcome, _ = await run(backend)
    assert said == [STANDARD]
    assert outcome.route == "generated"
    assert outcome.spoken == [STANDARD]
    assert outcome.reason.startswith("stopped after 1 clause")
    assert "seven dollars" in outcome.reason
    assert backend.closed


async def test_refusal_falls_back() -> None:
    said, outcome, _ = await run(ScriptedBackend(["I don't know."]))
    assert said == [FALLBACK]
    assert outcome.route == "kb_fallback"
    assert "declined" in outcome.reason


async def test_refusal_phrase_of_the_prompt_falls_back() -> None:
    said, outcome, _ = await run(ScriptedBackend(["I'm sorry, I don't have that information."]))
    assert said == [FALLBACK]
    assert outcome.route == "kb_fallback"


# ---------------------------------------------------------------- deadlines


async def test_no_first_piece_within_the_deadline_falls_back_in_time() -> None:
    backend = ScriptedBackend([STANDARD], delays=[5.0])
    said, outcome, elapsed = await run(backend)
    assert said == [FALLBACK]
    assert outcome.route == "kb_fallback"
    assert "no first token" in outcome.reason
    assert outcome.first_token_s is None and outcome.tokens == 0
    assert DEADLINE * 0.9 <= elapsed < DEADLINE + 0.5
    assert backend.closed and backend.served == 0


async def test_a_stalled_stream_keeps_what_was_said() -> None:
    backend = ScriptedBackend([STANDARD, " Express", " delivery arrives soon."], delays=[0.0, 0.0, 5.0])
    said, outcome, elapsed = await run(backend)
    assert said == [STANDARD]
    assert outcome.route == "generated"
    assert outcome.reason.startswith("stopped after 1 clause")
    assert "stalled" in outcome.reason
    assert elapsed < DEADLINE + 0.5


async def test_slow_but_steady_pieces_are_not_a_stall() -> None:
    # Each piece is within the deadline of the one before, though the whole answer takes longer.
    pieces = words(STANDARD)
    delay = DEADLINE * 0.4
    said, outcome, elapsed = await run(ScriptedBackend(pieces, delays=[delay] * len(pieces)))
    assert elapsed > DEADLINE
    assert said == [STANDARD]
    assert outcome.route == "generated"


# ---------------------------------------------------------------- backend failures


async def test_backend_error_before_any_piece_falls_back() -> None:
    backend = ScriptedBackend([], error=LLMError("connection refused"))
    said, outcome, elapsed = await run(backend)
    assert said == [FALLBACK]
    assert outcome.route == "kb_fallback"
    assert "LLM backend failed" in outcome.reason and "connection refused" in outcome.reason
    assert elapsed < DEADLINE


async def test_backend_error_after_a_grounded_clause_keeps_it() -> None:
    # The space after the period lets the splitter close the first clause before the error.
    backend = ScriptedBackend([STANDARD, " Express"], error=LLMError("stream cut short"))
    said, outcome, _ = await run(backend)
    assert said == [STANDARD]
    assert outcome.route == "generated"
    assert outcome.reason.startswith("stopped after 1 clause")
    assert "LLM backend failed" in outcome.reason


async def test_stream_ending_mid_sentence_speaks_the_grounded_rest() -> None:
    # No closing period: the splitter's rest is checked and spoken when the stream ends.
    said, outcome, _ = await run(ScriptedBackend(words(STANDARD.rstrip("."))))
    assert said == [STANDARD.rstrip(".")]
    assert outcome.route == "generated"
