"""Grounded prompts for a phone answer, and the stop sequences that end the answer.

Format choice. The bundled Gemma 3 270M is a *base* model: it has no chat template and follows no
instructions, but it continues documents well. So the default style ("fewshot") is a document it
can continue: a one-line description of the call log, three worked examples (one refused because
the notes lack the answer, two answered from the notes), then this call's notes, known facts, recent
turns and the caller's question, ending with "Agent:" where the answer starts. The answer is one
line, so the stop sequences end it at the newline (or at a following "Caller:" / "Notes:" if a
server strips newlines). The fixed part comes first and never changes, so llama.cpp (and vLLM's
prefix cache) reuse its evaluated tokens across turns and only the call-specific tail costs time.

After fine-tuning, an adapter trained on Gemma's turn format answers better with style "gemma":
`<start_of_turn>user ... <end_of_turn>\n<start_of_turn>model\n`, stopped by `<end_of_turn>`. The
same content (instruction, notes, facts, history, question) goes in the user turn, so a model
fine-tuned on `build_prompt(..., style="gemma")` output sees at run time what it saw in training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

PromptStyle = Literal["fewshot", "gemma"]

#: What the model says when the notes do not hold the answer (the examples teach it this phrase).
REFUSAL = "I'm sorry, I don't have that information."

#: Stop sequences for the few-shot style: the answer is the rest of the "Agent:" line.
STOP: tuple[str, ...] = ("\n", "Caller:", "Notes:", "Agent:")
#: Stop sequences for the Gemma turn style.
GEMMA_STOP: tuple[str, ...] = ("<end_of_turn>", "<start_of_turn>", "\nCaller:")

MAX_PASSAGES = 3
MAX_PASSAGE_WORDS = 70
MAX_HISTORY_TURNS = 3
MAX_TURN_WORDS = 30

_HEADER = (
    "Phone calls to customer service. The agent answers in one or two short sentences, "
    "using only the facts in the notes. If the notes do not give the answer, the agent says: "
    f'"{REFUSAL}"\n\n'
    # Refusal first, answers last: a base model leans towards the most recent example's shape
    # (with the refusal last, it refused 8 of 10 answerable demo questions; this order: 5 grounded).
    "Notes:\n"
    "- You can cancel an order within one hour of placing it.\n"
    "Caller: Do you sell gift cards?\n"
    f"Agent: {REFUSAL}\n\n"
    "Notes:\n"
    "- Standard delivery takes three to five business days.\n"
    "- Orders over fifty dollars ship for free.\n"
    "Caller: How long will my parcel take to come?\n"
    "Agent: Standard delivery takes three to five business days.\n\n"
    "Notes:\n"
    "- We accept Visa, Mastercard and PayPal.\n"
    "- Refunds reach your account within ten days.\n"
    "Caller: when do i get my money back\n"
    "Agent: Refunds reach your account within ten days.\n\n"
)

_INSTRUCTION = (
    "You are a phone agent. Answer in one or two short sentences, using only the facts in the notes. "
    f'If the notes do not give the answer, say: "{REFUSAL}"'
)


def stop_sequences(style: PromptStyle = "fewshot") -> tuple[str, ...]:
    return GEMMA_STOP if style == "gemma" else STOP


def build_prompt(
    question: str,
    passages: Sequence[str],
    history: Sequence[tuple[str, str]] = (),
    facts: Mapping[str, str] | None = None,
    *,
    style: PromptStyle = "fewshot",
) -> str:
    """The prompt for one caller turn.

    `passages`: retrieved knowledge-base texts, best first (at most three are used, each shortened).
    `history`: earlier (caller, agent) turns of this call, oldest first (the last three are used).
    `facts`: what the call has established, e.g. {"order_number": "45712"}.
    """
    body = _body(question, passages, history, facts or {})
    if style == "gemma":
        return f"<start_of_turn>user\n{_INSTRUCTION}\n\n{body}<end_of_turn>\n<start_of_turn>model\n"
    return f"{_HEADER}{body}Agent:"


def fact_lines(facts: Mapping[str, str]) -> list[str]:
    """The call's facts as short sentences ("order number is 45712"), for grounding.check(known=...)."""
    return [f"{_label(k)} {_one_line(v)}." for k, v in facts.items() if str(v).strip()]


def is_refusal(text: str) -> bool:
    """True when the generated answer is (or starts with) the "I don't know" phrase."""
    words = _plain(text)
    return words.startswith(_plain(REFUSAL)[:24]) or "don't know" in words or "do not know" in words


def _body(
    question: str, passages: Sequence[str], history: Sequence[tuple[str, str]], facts: Mapping[str, str]
) -> str:
    lines = ["Notes:"]
    lines += [f"- {_shorten(p, MAX_PASSAGE_WORDS)}" for p in passages[:MAX_PASSAGES] if p.strip()]
    if len(lines) == 1:
        lines.append("- (none)")
    known = [f"{_label(k)} {_one_line(v)}" for k, v in facts.items() if str(v).strip()]
    if known:
        lines.append(f"- The caller's {'; '.join(known)}.")
    for caller, agent in list(history)[-MAX_HISTORY_TURNS:]:
        lines.append(f"Caller: {_shorten(caller, MAX_TURN_WORDS)}")
        lines.append(f"Agent: {_shorten(agent, MAX_TURN_WORDS)}")
    lines.append(f"Caller: {_one_line(question)}")
    return "\n".join(lines) + "\n"


def _label(slot: str) -> str:
    # "order_number" -> "order number is"; the model reads prose better than key=value.
    return slot.replace("_", " ").strip() + " is"


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _shorten(text: str, max_words: int) -> str:
    words = _one_line(text).split(" ")
    return " ".join(words) if len(words) <= max_words else " ".join(words[:max_words]) + " ..."


def _plain(text: str) -> str:
    return re.sub(r"[^a-z' ]", "", text.lower().replace("’", "'")).strip()
