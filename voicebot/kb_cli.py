"""`voicebot kb ingest|list|search`: manage and probe the knowledge base from the shell.

Exit codes: 0 on success; 1 when the knowledge base cannot be opened, or when `ingest` met any bad
file or row (the good rows are stored all the same, so a CSV with one typo still loads); 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from voicebot.config import Settings
from voicebot.kb import Hit, IngestReport, KnowledgeBase, KnowledgeBaseError, ensure_demo

_ANSWER_WIDTH = 60


def run(settings: Settings, args: argparse.Namespace) -> int:
    from voicebot.embeddings import lazy_embedder

    if args.kb_command == "search" and args.k < 1:
        print("error: -k must be at least 1", file=sys.stderr)
        return 2
    try:
        # Lazy: `kb list` never embeds, and should not pay the model's ~5 s load.
        kb = KnowledgeBase(settings.resolved_milvus_uri, settings.kb_collection, lazy_embedder())
    except KnowledgeBaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if args.kb_command == "ingest":
            return _ingest(kb, args.paths)
        _load_demo_if_wanted(kb, settings)
        if args.kb_command == "list":
            return _list(kb)
        return _search(kb, args.text, args.k, settings.kb_threshold)
    finally:
        kb.close()


def _ingest(kb: KnowledgeBase, paths: list[str]) -> int:
    report = kb.ingest(paths)
    _print_report(report)
    print(f"{kb.count()} entries in the knowledge base")
    return 1 if report.errors else 0


def _print_report(report: IngestReport) -> None:
    for source, added in report.added.items():
        print(f"{_short(source)}: {added} entries")
    for error in report.errors:
        print(error, file=sys.stderr)
    if report.errors:
        print(f"{len(report.errors)} problem(s); the other rows were stored", file=sys.stderr)


def _load_demo_if_wanted(kb: KnowledgeBase, settings: Settings) -> None:
    # The same rule as server start, so `list` and `search` show what the bot would answer from.
    if settings.kb_demo and ensure_demo(kb) is not None:
        print("loaded the demo knowledge base (VOICEBOT_KB_DEMO=false turns this off)", file=sys.stderr)


def _list(kb: KnowledgeBase) -> int:
    entries = kb.entries()
    if not entries:
        print("the knowledge base is empty: add files with `voicebot kb ingest PATH...`")
        return 0
    for entry in entries:
        location = f"{_short(entry.source)}:{entry.line}"
        print(f"{entry.id:>6}  {location}  {entry.question}  | {_truncate(entry.answer, _ANSWER_WIDTH)}")
    print(f"{len(entries)} entries")
    return 0


def _search(kb: KnowledgeBase, text: str, k: int, threshold: float) -> int:
    hits = kb.search(text, k=k)
    if not hits:
        print("no entries")
        return 0
    for rank, hit in enumerate(hits, start=1):
        print(_format_hit(rank, hit, threshold))
    return 0


def _format_hit(rank: int, hit: Hit, threshold: float) -> str:
    # Mark what the bot would not speak, which is what one checks when tuning VOICEBOT_KB_THRESHOLD.
    note = "" if hit.score >= threshold else f"  (below threshold {threshold:.2f})"
    return f"{rank}. {hit.score:.3f}  {hit.question}{note}\n   {hit.answer}"


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _short(source: str) -> str:
    """The path relative to the working directory when inside it; absolute otherwise."""
    path = Path(source)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return os.fspath(path)
