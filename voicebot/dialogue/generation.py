"""A generated answer, spoken clause by clause, that never outlives its deadline or its grounding.

The LLM's text is cut into clauses as it streams; each clause is checked against the retrieved
passages (and the call's known facts) before it is handed to TTS, so speech starts at the first
grounded clause. When the backend gives no first token within the deadline, stalls, fails, or its
first clause is not grounded, the turn falls back to the plan's fallback reply (the best knowledge-base
answer, or an apology with an offer of a human). A later clause that is not grounded ends the answer
there: what was already said was checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llm import LLMBackend, LLMError
from llm.clauses import ClauseSplitter
from llm.grounding import check
from llm.prompts import STOP, build_prompt, fact_lines, is_refusal
from voicebot.dialogue.policy import GenerationPlan

log = logging.getLogger(__name__)


@dataclass
class GenerationOutcome:
    route: str = "generated"
    reason: str = ""
    spoken: list[str] = field(default_factory=list)
    first_token_s: float | None = None  # from the request to the first piece of text
    tokens: int = 0
    generation_s: float = 0.0

    @property
    def tokens_per_s(self) -> float | None:
        busy = self.generation_s - (self.first_token_s or 0.0)
        return round(self.tokens / busy, 1) if self.tokens > 1 and busy > 0 else None

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"llm_tokens": float(self.tokens)}
        if self.first_token_s is not None:
            out["llm_first_token"] = round(self.first_token_s * 1000, 1)
        if self.tokens_per_s is not None:
            out["llm_tokens_per_s"] = self.tokens_per_s
        return out


class _Fallback(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


async def speak_generated(
    backend: LLMBackend,
    plan: GenerationPlan,
    outcome: GenerationOutcome,
    *,
    deadline_s: float,
    max_tokens: int,
) -> AsyncIterator[str]:
    """Yield what to say, clause by clause; `outcome` tells afterwards which route it took and why."""
    prompt = build_prompt(plan.question, plan.passages, plan.history, plan.facts)
    sources = Sources(plan.passages, fact_lines(plan.facts))
    started = time.monotonic()
    pieces = backend.stream(prompt, max_tokens=max_tokens, stop=STOP)
    try:
        async for clause in _grounded_clauses(pieces, sources, outcome, started, deadline_s):
            outcome.spoken.append(clause)
            yield clause
        if outcome.spoken:
            outcome.reason = outcome.reason or f"{len(outcome.spoken)} grounded clause(s)"
        else:
            raise _Fallback("the model gave no answer")
    except _Fallback as fallback:
        elapsed_ms = (time.monotonic() - started) * 1000
        if outcome.spoken:
            outcome.reason = f"stopped after {len(outcome.spoken)} clause(s): {fallback.why}"
        else:
            outcome.route = plan.fallback_route
            outcome.reason = f"{fallback.why}; fell back after {elapsed_ms:.0f} ms"
            log.info("generated answer fell back (%s)", outcome.reason)
            yield plan.fallback_reply
    finally:
        outcome.generation_s = time.monotonic() - started
        with contextlib.suppress(Exception):
            await pieces.aclose()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Sources:
    passages: list[str]
    facts: list[str]  # the call's slots as sentences ("order number is 45712.")


async def _grounded_clauses(
    pieces: AsyncIterator[str],
    sources: Sources,
    outcome: GenerationOutcome,
    started: float,
    deadline_s: float,
) -> AsyncIterator[str]:
    splitter = ClauseSplitter()
    async for piece in _within_deadline(pieces, outcome, started, deadline_s):
        for clause in splitter.feed(piece):
            if _checked(clause, sources, first=not outcome.spoken):
                yield clause
    rest = splitter.flush()
    if rest.strip() and _checked(rest, sources, first=not outcome.spoken):
        yield rest


def _checked(clause: str, sources: Sources, *, first: bool) -> bool:
    """True: speak it. False: skip it (no claim in it, e.g. "Sure."). Raises when it must not be said."""
    if first and is_refusal(clause):
        raise _Fallback("the model declined to answer")
    grounding = check(clause, sources.passages, known=sources.facts)
    if grounding.ok:
        return True
    if grounding.reason == "nothing to ground":
        return False
    raise _Fallback(f"clause {clause.strip()!r} not grounded ({grounding.reason})")


async def _within_deadline(
    pieces: AsyncIterator[str], outcome: GenerationOutcome, started: float, deadline_s: float
) -> AsyncIterator[str]:
    """The backend's pieces; the first within the deadline, and none more than a deadline apart."""
    iterator = pieces.__aiter__()
    while True:
        try:
            async with asyncio.timeout(deadline_s):
                piece = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            what = "no first token" if outcome.first_token_s is None else "the stream stalled"
            raise _Fallback(f"{what} within {deadline_s:.1f} s") from None
        except LLMError as exc:
            raise _Fallback(f"LLM backend failed: {exc}") from None
        if outcome.first_token_s is None:
            outcome.first_token_s = time.monotonic() - started
        outcome.tokens += 1
        yield piece
