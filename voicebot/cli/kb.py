"""`voicebot kb ingest|list|search|export|calibrate`: manage, probe and calibrate the knowledge base.

This module opens the knowledge base and runs the command on it: `ingest`, `list`, `search`,
`export` (what they print: `voicebot.cli.kb_output`) and `calibrate` (`voicebot.cli.kb_calibrate`).

Exit codes: 0 on success; 1 when the knowledge base cannot be opened, or when `ingest` met any bad
file or row; 2 for bad arguments. A file with a bad row that is new to the knowledge base stores its
good rows all the same (so a first CSV with one typo still loads), but one that had entries keeps
them as they were until it ingests without a bad row: a broken re-upload never empties a FAQ.

milvus-lite lets one process at a time open the knowledge base. When a running server holds it, the
commands go through that server's `/api/kb` endpoints instead (`voicebot.cli.kb_remote`).
"""

from __future__ import annotations

import argparse
import sys

from voicebot.cli.kb_calibrate import calibrate_command
from voicebot.cli.kb_output import export_entries, print_entries, print_hits, print_ingest
from voicebot.cli.kb_remote import through_server
from voicebot.config import Settings
from voicebot.kb.models import KnowledgeBaseError, KnowledgeBaseLocked
from voicebot.kb.store import KnowledgeBase, ensure_demo
from voicebot.kb.thresholds import load_thresholds
from voicebot.textsafe import terminal_safe


def run(settings: Settings, args: argparse.Namespace) -> int:
    from voicebot.nlu.embeddings import lazy_embedder

    if args.kb_command == "search" and args.k < 1:
        print("error: -k must be at least 1", file=sys.stderr)
        return 2
    if args.kb_command == "calibrate" and not 0.0 < args.precision <= 1.0:
        print("error: --precision must be in (0, 1]", file=sys.stderr)
        return 2
    thresholds = load_thresholds(settings)
    try:
        # Lazy: `kb list` never embeds, and should not pay the model's ~5 s load.
        kb = KnowledgeBase(
            settings.resolved_milvus_uri,
            settings.kb_collection,
            lazy_embedder(settings.embedder),
            lexical_weight=thresholds.lexical_weight,
        )
    except KnowledgeBaseLocked as exc:
        return through_server(settings, args, exc)
    except KnowledgeBaseError as exc:
        print(f"error: {terminal_safe(str(exc))}", file=sys.stderr)
        return 1
    try:
        if args.kb_command == "ingest":
            return _ingest(kb, args.paths)
        _load_demo_if_wanted(kb, settings)
        if args.kb_command == "list":
            return _list(kb)
        if args.kb_command == "export":
            return export_entries(kb.entries(), args.path)
        if args.kb_command == "calibrate":
            return calibrate_command(kb, settings, args)
        return _search(kb, args.text, args.k, thresholds.answer)
    finally:
        kb.close()


def _ingest(kb: KnowledgeBase, paths: list[str]) -> int:
    report = kb.ingest(paths)
    return print_ingest(report.added, [str(error) for error in report.errors], kb.count(), report.kept)


def _load_demo_if_wanted(kb: KnowledgeBase, settings: Settings) -> None:
    # The same rule as server start, so `list` and `search` show what the bot would answer from.
    if settings.kb_demo and ensure_demo(kb) is not None:
        print("loaded the demo knowledge base (VOICEBOT_KB_DEMO=false turns this off)", file=sys.stderr)


def _list(kb: KnowledgeBase) -> int:
    return print_entries(kb.entries())


def _search(kb: KnowledgeBase, text: str, k: int, threshold: float) -> int:
    return print_hits(kb.search(text, k=k), threshold)
