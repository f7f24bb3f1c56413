"""`voicebot kb calibrate FILE.csv`: choose the knowledge base's thresholds from labelled questions.

`calibrate FILE.csv` (columns text,expected) searches every row, chooses the lexical weight and the
answer, related and clarify thresholds from the results (`voicebot.kb.calibration.calibrate`), prints
them with the precision and recall behind them, and writes DATA_DIR/kb-thresholds.json, which the
server reads at start (`voicebot.kb.thresholds.load_thresholds`).

Through a running server (`voicebot.cli.kb_remote`), the same runs on the server's hits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Protocol

from voicebot.config import Settings
from voicebot.kb.calibration import (
    TARGET_PRECISION,
    Calibration,
    calibrate,
    observe,
    read_calibration_csv,
    write_thresholds,
)
from voicebot.kb.models import Entry, FileRejected, Hit, KnowledgeBaseError
from voicebot.kb.thresholds import thresholds_path
from voicebot.textsafe import terminal_safe


def add_calibrate_parser(kb_sub: Any) -> None:
    """Add `calibrate` to the `kb` subcommand's subparsers."""
    calibrate_parser = kb_sub.add_parser(
        "calibrate",
        help="Compute the answer thresholds and lexical weight from labelled caller questions.",
        description="FILE.csv has columns text,expected: what a caller says, and the knowledge-base "
        "question it should match (empty when the knowledge base has no answer). Writes "
        "DATA_DIR/kb-thresholds.json; VOICEBOT_KB_* variables set explicitly still win over it.",
    )
    calibrate_parser.add_argument("path", type=Path, metavar="FILE.csv")
    calibrate_parser.add_argument(
        "--precision",
        type=float,
        default=TARGET_PRECISION,
        help=f"Precision the direct-answer threshold must keep (default {TARGET_PRECISION}).",
    )
    calibrate_parser.add_argument(
        "--dry-run", action="store_true", help="Print the values without writing the file."
    )


class _Searchable(Protocol):
    def entries(self) -> list[Entry]: ...

    def search(self, text: str, k: int = 3) -> list[Hit]: ...


def calibrate_command(kb: _Searchable, settings: Settings, args: argparse.Namespace) -> int:
    try:
        rows = read_calibration_csv(args.path)
    except FileRejected as exc:
        where = f"{args.path}:{exc.line}" if exc.line else str(args.path)
        print(terminal_safe(f"error: {where}: {exc}"), file=sys.stderr)
        return 1
    try:
        observations = observe(kb, rows)
    except KnowledgeBaseError as exc:
        print(terminal_safe(f"error: {args.path}: {exc}"), file=sys.stderr)
        return 1
    result = calibrate(observations, embedder=settings.embedder, target_precision=args.precision)
    print_calibration(result)
    if args.dry_run:
        return 0
    path = thresholds_path(settings)
    write_thresholds(path, result, str(args.path.resolve()))
    print(f"wrote {path}")
    explicit = sorted(name for name in result.settings() if name in settings.model_fields_set)
    if explicit:
        names = ", ".join(f"VOICEBOT_{name.upper()}" for name in explicit)
        print(f"note: {names} set explicitly, and wins over the file", file=sys.stderr)
    return 0


def print_calibration(result: Calibration) -> None:
    """The calibrated values, each with the figures behind it."""
    print(
        f"{result.rows} questions ({result.in_kb} in the knowledge base, {result.out_of_kb} not), "
        f"embedder {result.embedder or '?'}"
    )
    print("lexical weight  top-1   top-3   answer threshold  precision  recall")
    for row in result.weights:
        mark = "*" if row.lexical_weight == result.lexical_weight else " "
        print(
            f"{mark} {row.lexical_weight:<12.2f}  {row.top1:6.1%}  {row.top3:6.1%}  "
            f"{row.answer.threshold:<16.3f}  {row.answer.precision:8.1%}  {row.answer.recall:6.1%}"
        )
    answer, related, clarify = result.answer, result.related, result.clarify
    print(
        f"kb_lexical_weight    = {result.lexical_weight:.2f}   top-1 {result.top1:.1%}, "
        f"top-3 {result.top3:.1%} of in-KB questions"
    )
    print(
        f"kb_threshold         = {answer.threshold:.3f}  direct answers: precision {answer.precision:.1%} "
        f"(target {result.target_precision:.0%}), recall {answer.recall:.1%}, decisions right "
        f"{answer.accuracy:.1%}, out-of-KB answered {answer.false_accept:.1%}"
    )
    print(
        f"kb_related_threshold = {related.threshold:.3f}  right passage retrieved for {related.recall:.1%} "
        f"of in-KB questions; {related.out_of_kb_pass:.1%} of out-of-KB questions pass"
    )
    print(
        f"kb_clarify_margin    = {clarify.margin:.3f}  asks on {clarify.caught:.1%} of wrong top-1 "
        f"answers ({clarify.resolvable:.0%} of them offer the right one) and {clarify.needless:.1%} "
        "of right ones"
    )
