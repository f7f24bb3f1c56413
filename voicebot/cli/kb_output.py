"""What the `voicebot kb` commands print: entries, hits, ingest reports; and `export`'s CSV.

`export FILE.csv` (`-` for stdout) writes every entry as question,answer,source,line and one column
per metadata name. Each cell goes through `csv_safe_cell`, so a cell a spreadsheet would run as a
formula (`=cmd|' /C calc'!A0`) starts with a `'` instead.

Everything printed from stored data goes through `terminal_safe`: an entry cannot send escape
sequences to the terminal of whoever lists it.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from voicebot.kb.models import Entry, Hit
from voicebot.textsafe import csv_safe_cell, terminal_safe

_ANSWER_WIDTH = 60


def print_ingest(
    added: dict[str, int], errors: Sequence[str], total: int | None, kept: dict[str, int] | None = None
) -> int:
    for source, count in added.items():
        print(terminal_safe(f"{_short(source)}: {count} entries"))
    for error in errors:
        print(terminal_safe(error), file=sys.stderr)
    if errors:
        outcome = "the other rows were stored" if added else "nothing was stored"
        if kept:
            files = "1 file was" if len(kept) == 1 else f"{len(kept)} files were"
            outcome = f"{files} not replaced (the entries stored before are kept); {outcome}"
        print(f"{len(errors)} problem(s); {outcome}", file=sys.stderr)
    if total is not None:
        print(f"{total} entries in the knowledge base")
    return 1 if errors else 0


def print_entries(entries: list[Entry]) -> int:
    if not entries:
        print("the knowledge base is empty: add files with `voicebot kb ingest PATH...`")
        return 0
    for entry in entries:
        location = f"{_short(entry.source)}:{entry.line}"
        answer = _truncate(entry.answer, _ANSWER_WIDTH)
        print(terminal_safe(f"{entry.id:>6}  {location}  {entry.question}  | {answer}"))
    print(f"{len(entries)} entries")
    return 0


# Columns of an export before the metadata ones.
_EXPORT_COLUMNS = ("question", "answer", "source", "line")


def export_entries(entries: list[Entry], target: str) -> int:
    """Write the entries as CSV to `target` ("-": stdout), every cell through `csv_safe_cell`."""
    keys = list(dict.fromkeys(key for entry in entries for key in entry.metadata))
    # A FAQ may have its own "source" or "line" column: it gets a name of its own, not ours.
    header = [*_EXPORT_COLUMNS, *(f"metadata.{key}" if key in _EXPORT_COLUMNS else key for key in keys)]
    rows = [
        [
            entry.question,
            entry.answer,
            entry.source,
            str(entry.line),
            *(_cell(entry.metadata.get(key)) for key in keys),
        ]
        for entry in entries
    ]
    if target == "-":
        # Shown on a terminal rather than piped on, it is read by a person: no escape sequences either.
        shown = sys.stdout.isatty()
        _write_csv(sys.stdout, [header, *rows], terminal_safe if shown else None)
        return 0
    try:
        with open(target, "w", newline="", encoding="utf-8") as f:
            _write_csv(f, [header, *rows])
    except OSError as exc:
        print(terminal_safe(f"error: cannot write {target}: {exc.strerror or exc}"), file=sys.stderr)
        return 1
    print(terminal_safe(f"{len(entries)} entries written to {target}"))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _write_csv(out: TextIO, rows: list[list[str]], shown: Callable[[str], str] | None = None) -> None:
    writer = csv.writer(out)
    for row in rows:
        cells = [csv_safe_cell(cell) for cell in row]
        writer.writerow([shown(cell) for cell in cells] if shown else cells)


def print_hits(hits: list[Hit], threshold: float) -> int:
    if not hits:
        print("no entries")
        return 0
    for rank, hit in enumerate(hits, start=1):
        print(_format_hit(rank, hit, threshold))
    return 0


def _format_hit(rank: int, hit: Hit, threshold: float) -> str:
    # Mark what the bot would not speak, which is what one checks when tuning VOICEBOT_KB_THRESHOLD.
    note = "" if hit.score >= threshold else f"  (below threshold {threshold:.2f})"
    parts = f"[vector {hit.vector_score:.3f}, lexical {hit.lexical_score:.3f}]"
    question, answer = terminal_safe(hit.question), terminal_safe(hit.answer)
    return f"{rank}. {hit.score:.3f}  {question}{note}\n   {answer}  {parts}"


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _short(source: str) -> str:
    """The path relative to the working directory when inside it; absolute otherwise."""
    path = Path(source)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return os.fspath(path)
