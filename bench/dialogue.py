"""Dialogue time per turn, by route; the LLM's speed; and how fast a turn falls back when the LLM is down.

Runs the real policy (`voicebot.dialogue.policy.Brain`: sentiment, slots, intent, hybrid retrieval over a
milvus-lite copy of the demo knowledge base) and the real generation path (`voicebot.dialogue.generation`:
llama.cpp on the bundled Gemma 3 270M, clause splitting, grounding check), in process, without audio:
the figure is the dialogue's share of voice-to-voice, from the final transcript to the first text
handed to TTS.

    .venv/bin/python bench/dialogue.py [--rounds 3] [--deadline 1.2]

Figures printed:
- per route: p50 / p95 ms from the caller's text to the first speakable text (the whole reply for a
  knowledge-base answer, the first grounded clause for a generated one, the fallback otherwise);
- the LLM: time to first token and tokens/s (p50), and how many generated answers passed grounding;
- fallback when the LLM is down: connection refused, and a server that accepts but never answers
  (the deadline), p50 ms to the fallback text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llm import LLMBackend, make_backend
from voicebot.config import Settings
from voicebot.dialogue.generation import GenerationOutcome, speak_generated
from voicebot.dialogue.memory import Memory
from voicebot.dialogue.policy import Brain, Decision, Thresholds
from voicebot.kb import DEMO_FAQ, KnowledgeBase, load_thresholds
from voicebot.nlu.embeddings import load_embedder
from voicebot.nlu.intents import IntentClassifier

CALIBRATION = Path(__file__).resolve().parents[1] / "voicebot" / "demo" / "calibration.csv"


def questions() -> list[str]:
    with CALIBRATION.open(newline="") as f:
        return [row["text"] for row in csv.DictReader(f) if row.get("text")]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def first_text(
    brain: Brain, text: str, llm: LLMBackend | None, deadline: float, max_tokens: int
) -> tuple[Decision, str, float, GenerationOutcome | None]:
    """Decide a turn; return (decision, route taken, ms to the first speakable text, outcome)."""
    started = time.perf_counter()
    decision = await asyncio.to_thread(brain.decide, text, Memory())
    if decision.generate is None or llm is None:
        return decision, decision.route, (time.perf_counter() - started) * 1000, None
    outcome = GenerationOutcome()
    first_ms = None
    async for _clause in speak_generated(
        llm, decision.generate, outcome, deadline_s=deadline, max_tokens=max_tokens
    ):
        if first_ms is None:
            first_ms = (time.perf_counter() - started) * 1000
    return decision, outcome.route, first_ms or 0.0, outcome


async def hung_server() -> tuple[asyncio.AbstractServer, int]:
    """Accepts connections and never answers: a wedged LLM server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="Passes over the question set.")
    parser.add_argument("--deadline", type=float, default=1.2)
    parser.add_argument("--max-tokens", type=int, default=60)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="bench-dialogue-"))
    settings = Settings(data_dir=data)
    limits = load_thresholds(settings)
    kb = KnowledgeBase(
        str(data / "kb.db"), "kb", load_embedder(settings.embedder), lexical_weight=limits.lexical_weight
    )
    kb.ingest([DEMO_FAQ])
    intents = IntentClassifier.load(None)
    thresholds = Thresholds(limits.answer, limits.related, limits.clarify_margin)
    llm = make_backend("local", models_dir=data / "models")
    brain = Brain(kb, intents, thresholds, llm_enabled=True)
    # Every related question through the LLM, for enough generated samples.
    forced = Brain(kb, intents, Thresholds(1.01, limits.related, limits.clarify_margin), llm_enabled=True)
    texts = questions()
    print(
        f"{len(texts)} caller questions x {args.rounds} round(s); thresholds {thresholds} ({limits.source})"
    )
    await first_text(brain, texts[0], llm, args.deadline, args.max_tokens)  # warm-up

    times: dict[str, list[float]] = defaultdict(list)
    ttft: list[float] = []
    rates: list[float] = []
    grounded = attempts = 0
    for _ in range(args.rounds):
        for text in texts:
            for b in (brain, forced):
                decision, route, ms, outcome = await first_text(b, text, llm, args.deadline, args.max_tokens)
                if b is forced and decision.generate is None:
                    continue  # a control intent or no related passage: counted by the first brain
                label = f"{decision.route}->{route}" if decision.generate is not None else route
                times[label].append(ms)
                if outcome is not None:
                    attempts += 1
                    grounded += outcome.route == "generated"
                    if outcome.first_token_s is not None:
                        ttft.append(outcome.first_token_s * 1000)
                    if outcome.tokens_per_s:
                        rates.append(outcome.tokens_per_s)

    print("\nDialogue time per turn (caller text -> first speakable text), ms")
    print(f"{'route':<32}{'n':>5}{'p50':>9}{'p95':>9}")
    for label, values in sorted(times.items()):
        print(f"{label:<32}{len(values):>5}{statistics.median(values):>9.1f}{pct(values, 0.95):>9.1f}")
    if ttft:
        print(
            f"\nLLM (local llama.cpp, Gemma 3 270M Q4_K_M): time to first token p50 "
            f"{statistics.median(ttft):.0f} ms (p95 {pct(ttft, 0.95):.0f}), "
            f"{statistics.median(rates) if rates else 0:.1f} tokens/s p50; "
            f"{grounded}/{attempts} generated answers passed the grounding check"
        )

    refused = make_backend("openai", base_url="http://127.0.0.1:9/v1", model="x")
    server, port = await hung_server()
    hung = make_backend("openai", base_url=f"http://127.0.0.1:{port}/v1", model="x")
    print("\nFallback when the LLM is down (caller text -> fallback text), ms")
    for name, backend in (("connection refused", refused), ("server hung (deadline)", hung)):
        values = []
        for text in texts[:8]:
            decision, route, ms, _ = await first_text(forced, text, backend, args.deadline, args.max_tokens)
            if decision.generate is not None:
                values.append(ms)
        if values:
            print(
                f"  {name:<26} n={len(values):<3} p50 {statistics.median(values):7.1f}  "
                f"max {max(values):7.1f}  (deadline {args.deadline * 1000:.0f})"
            )
        await backend.aclose()
    server.close()
    await llm.aclose()
    kb.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
