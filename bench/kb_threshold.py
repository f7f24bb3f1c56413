"""Calibrate the knowledge-base answer threshold on caller-style questions.

Builds a throwaway milvus-lite knowledge base from the demo FAQ (once per embed mode), asks it
questions phrased as callers say them (with ASR-style slips) and questions the shop cannot answer,
and prints the top-1 score distributions, top-1 accuracy, and the threshold that best separates
the two sets.

    .venv/bin/python bench/kb_threshold.py [--kb FILE] [--mode question|concat|mean|all]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voicebot.embeddings import load_embedder
from voicebot.kb import DEMO_FAQ, EMBED_MODES, EmbedMode, KnowledgeBase

# Demo question -> how callers ask it, with ASR-style slips ("a rived", "except", "pay pal").
CALLER_QUESTIONS: dict[str, list[str]] = {
    "How do I track my order?": [
        "where is my order right now",
        "um how can i see where my package is",
        "has my order shipped yet",
    ],
    "Can I cancel my order?": [
        "i need to cancel the order i just made",
        "i'd like to cancel what i bought this morning",
    ],
    "Can I add or remove items from an order I already placed?": [
        "i forgot to put something in my order can i still add it",
    ],
    "What should I do if an item is missing from my order?": [
        "one of the things i ordered wasn't in the box",
        "i got the wrong number of items one is missing",
    ],
    "My order arrived damaged, what can I do?": [
        "the vase i ordered came broken",
        "the screen was cracked when it arrived",
    ],
    "Is there a minimum order value?": [
        "is there a minimum amount i have to spend",
    ],
    "I did not get an order confirmation email, did my order go through?": [
        "i never got a confirmation email for my order",
    ],
    "How long does delivery take?": [
        "how many days does delivery take",
        "um yeah hi i was wondering how long the uh delivery takes",
        "when will i receive my parcel if i order now",
    ],
    "How much does shipping cost?": [
        "how much do you charge for shipping",
        "is shipping free",
        "what are the delivery charges",
    ],
    "Do you ship internationally?": [
        "do you deliver to canada",
        "can you send stuff overseas",
        "do you ship to the u k",
    ],
    "My package is late and has not arrived, what should I do?": [
        "my parcel still hasn't come and it's late",
        "my package hasn't a rived yet",
        "my delivery is overdue",
    ],
    "How do I change my delivery address?": [
        "i gave the wrong address can i change it",
        "i need to send it to a different address",
    ],
    "Do you offer same-day delivery?": [
        "can i get my order delivered today",
    ],
    "Can I collect my order from a pickup point?": [
        "can i pick up the parcel myself somewhere",
    ],
    "What is your return policy?": [
        "what's your return policy",
        "how many days do i have to return something",
        "is there a refund if i don't like it",
    ],
    "How do I return an item?": [
        "how do i send an item back to you",
    ],
    "How long does it take to get my refund?": [
        "when do i get my money back",
        "how long till i get a re fund",
        "the refund hasn't shown up on my card",
    ],
    "Do I have to pay for return shipping?": [
        "are returns free or do i pay the postage",
    ],
    "Can I exchange an item for a different size or color?": [
        "can i swap these shoes for a bigger size",
        "i want a different colour of this shirt",
    ],
    "Which items can't be returned?": [
        "can i return a pair of earrings",
    ],
    "Which payment methods do you accept?": [
        "do you take pay pal",
        "what cards do you except",
        "do you accept apple pay",
    ],
    "Can I pay in installments?": [
        "can i split the payment into monthly parts",
        "can i pay a bit each month",
    ],
    "Why was my card payment declined?": [
        "my card keeps getting declined",
        "the payment didn't go through",
    ],
    "Why was I charged twice for one order?": [
        "you took the money from my account two times",
        "there are two charges on my statement",
    ],
    "How do I use a gift card?": [
        "i have a gift card how do i use it",
    ],
    "How do I use a discount code?": [
        "where do i type in my promo code",
        "my voucher code isn't working where do i enter it",
    ],
    "Can I get an invoice for my order?": [
        "i need an invoice for my company",
    ],
    "How do I reset my password?": [
        "i forgot my password",
        "i can't log in i forgot my pass word",
        "i can't remember my log in password",
    ],
    "How do I create an account?": [
        "how do i sign up",
        "how do i register",
    ],
    "How do I change the email address on my account?": [
        "i want to update my email address",
    ],
    "How do I delete my account?": [
        "please close my account",
    ],
    "How do I unsubscribe from your marketing emails?": [
        "stop sending me advertising emails",
        "remove me from your mailing list",
    ],
    "Can I order without creating an account?": [
        "do i need an account to buy something",
        "can i check out as a guest",
    ],
    "What are your customer service opening hours?": [
        "what time is customer service open",
        "are you open on saturdays",
        "when can i call you",
    ],
}
IN_KB: list[tuple[str, str]] = [(q, want) for want, qs in CALLER_QUESTIONS.items() for q in qs]

OUT_OF_KB: list[str] = [
    "do you sell cars",
    "what's the weather like today",
    "can i get a mortgage",
    "who won the football game last night",
    "do you have any job openings",
    "tell me a joke",
    "what is the capital of france",
    "i want to book a flight to paris",
    "how do i fix my car engine",
    "can you recommend a good restaurant",
    "is the bank open on sunday",
    "my washing machine is leaking",
    "what's my horoscope for today",
    "how much is bitcoin worth",
    "i'd like to order a pizza",
    "how tall is mount everest",
    "can you help me with my taxes",
    "i need a doctor's appointment",
    "how do i renew my passport",
    "what time is it in tokyo",
    "do you offer car insurance",
    "can i rent an apartment from you",
    "play some music",
    "what movies are showing tonight",
    "how do i get to the train station",
    "i want to adopt a dog",
    "how do i cook pasta",
    "is it going to rain tomorrow",
    "can you lend me some money",
    "what's the meaning of life",
    # Near the shop's domain on purpose: these share words with real entries.
    "do you repair bicycles",
    "what's the exchange rate for euros",
    "can you book me a taxi",
    "who is the president",
    "my internet is down",
    "do you sell insurance",
    "how do i open a bank account",
    "i need a plumber",
    "what's on tv tonight",
    "can you translate this into spanish",
    "my phone bill is too high",
    "do you deliver groceries",
    "i want to cancel my gym membership",
    "how much does a new car cost",
    "where can i vote",
]


@dataclass(frozen=True)
class Result:
    query: str
    score: float
    correct: bool  # top-1 is the expected entry (always False for out-of-KB queries)
    top3: bool


def run_queries(kb: KnowledgeBase) -> tuple[list[Result], list[Result], list[float]]:
    in_kb, out_kb, times = [], [], []
    for query, expected in IN_KB:
        start = time.perf_counter()
        hits = kb.search(query, k=3)
        times.append(time.perf_counter() - start)
        questions = [hit.question for hit in hits]
        in_kb.append(Result(query, hits[0].score, questions[0] == expected, expected in questions))
    for query in OUT_OF_KB:
        hits = kb.search(query, k=1)
        out_kb.append(Result(query, hits[0].score, False, False))
    return in_kb, out_kb, times


def check_expectations(kb: KnowledgeBase) -> None:
    questions = {entry.question for entry in kb.entries()}
    unknown = sorted({expected for _, expected in IN_KB} - questions)
    if unknown:
        raise SystemExit(f"benchmark expects entries the knowledge base lacks: {unknown}")


@dataclass(frozen=True)
class Rates:
    threshold: float
    false_accept: float  # out-of-KB questions answered
    false_reject: float  # in-KB questions not answered
    wrong_answer: float  # in-KB questions answered with the wrong entry


def rates_at(threshold: float, in_kb: list[Result], out_kb: list[Result]) -> Rates:
    return Rates(
        threshold,
        sum(r.score >= threshold for r in out_kb) / len(out_kb),
        sum(r.score < threshold for r in in_kb) / len(in_kb),
        sum(r.score >= threshold and not r.correct for r in in_kb) / len(in_kb),
    )


def cost(rates: Rates, wrong_cost: float) -> float:
    # Speaking an answer to the wrong question misleads the caller; declining only costs a fallback
    # (an LLM answer or a human), so wrong answers weigh `wrong_cost` times a false reject.
    return wrong_cost * (rates.false_accept + rates.wrong_answer) + rates.false_reject


def best_threshold(in_kb: list[Result], out_kb: list[Result], wrong_cost: float) -> Rates:
    """The cheapest threshold, centred in the first run of equally cheap ones for the most margin."""
    table = [rates_at(round(0.20 + 0.005 * i, 3), in_kb, out_kb) for i in range(121)]
    lowest = min(cost(r, wrong_cost) for r in table)
    run: list[Rates] = []
    for rates in table:
        if abs(cost(rates, wrong_cost) - lowest) < 1e-9:
            run.append(rates)
        elif run:
            break
    return run[len(run) // 2]


def describe(scores: list[float]) -> str:
    ordered = sorted(scores)
    q = statistics.quantiles(ordered, n=10)
    return (
        f"min {ordered[0]:.3f}  p10 {q[0]:.3f}  p50 {statistics.median(ordered):.3f}  "
        f"p90 {q[-1]:.3f}  max {ordered[-1]:.3f}"
    )


def histogram(in_scores: list[float], out_scores: list[float]) -> None:
    print("    score    in-KB (#)   out-of-KB (o)")
    for low in [x / 20 for x in range(2, 20)]:
        n_in = sum(low <= s < low + 0.05 for s in in_scores)
        n_out = sum(low <= s < low + 0.05 for s in out_scores)
        if n_in or n_out:
            print(f"    {low:.2f}-{low + 0.05:.2f}  {'#' * n_in:<12} {'o' * n_out}")


def report(mode: EmbedMode, in_kb: list[Result], out_kb: list[Result], times: list[float]) -> Rates:
    top1 = sum(r.correct for r in in_kb)
    top3 = sum(r.top3 for r in in_kb)
    print(f"\n== embed mode: {mode}")
    print(f"  top-1 accuracy (in-KB): {top1}/{len(in_kb)} = {top1 / len(in_kb):.1%}")
    print(f"  top-3 recall   (in-KB): {top3}/{len(in_kb)} = {top3 / len(in_kb):.1%}")
    print(f"  search latency p50 {statistics.median(times) * 1000:.1f} ms (embed + milvus-lite, k=3)")
    print(f"  in-KB top-1 scores     : {describe([r.score for r in in_kb])}")
    print(f"  out-of-KB top-1 scores : {describe([r.score for r in out_kb])}")
    histogram([r.score for r in in_kb], [r.score for r in out_kb])
    for t in (0.40, 0.45, 0.50, 0.55, 0.60):
        print_rates("at", rates_at(t, in_kb, out_kb))
    best = {w: best_threshold(in_kb, out_kb, w) for w in (1.0, 2.0)}
    for w, rates in best.items():
        print_rates(f"best, wrong answer costs {w:.0f}x:", rates)
    for r in (r for r in in_kb if not r.correct):
        print(f"    top-1 miss: {r.query!r} (score {r.score:.3f})")
    for r in sorted(out_kb, key=lambda r: -r.score)[:3]:
        print(f"    high out-of-KB: {r.query!r} (score {r.score:.3f})")
    return best[2.0]


def print_rates(label: str, r: Rates) -> None:
    print(
        f"    {label} {r.threshold:.3f}: false accept {r.false_accept:5.1%}  "
        f"false reject {r.false_reject:5.1%}  wrong answer {r.wrong_answer:5.1%}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, default=DEMO_FAQ, help="FAQ file to ingest (default: demo).")
    parser.add_argument("--mode", choices=[*EMBED_MODES, "all"], default="all")
    args = parser.parse_args()
    modes: list[EmbedMode] = list(EMBED_MODES) if args.mode == "all" else [args.mode]
    start = time.perf_counter()
    embedder = load_embedder()
    print(f"embedder loaded in {time.perf_counter() - start:.1f} s")
    embedder.embed(["warm up"])  # the first call allocates; keep it out of the latency figures
    print(f"{len(IN_KB)} in-KB questions, {len(OUT_OF_KB)} out-of-KB questions")
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            kb = KnowledgeBase(str(Path(tmp) / f"{mode}.db"), "kb", embedder, embed_mode=mode)
            kb.ingest([args.kb])
            check_expectations(kb)
            in_kb, out_kb, times = run_queries(kb)
            summary[mode] = (sum(r.correct for r in in_kb), report(mode, in_kb, out_kb, times))
            kb.close()
    print("\n== summary (threshold chosen with wrong answers costing 2x a false reject)")
    for mode, (top1, r) in summary.items():
        print(f"  {mode:9s} top-1 {top1}/{len(IN_KB)}", end="")
        print_rates("  threshold", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
