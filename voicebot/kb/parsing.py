"""Knowledge-base files read into records, with an error for each bad row.

CSV needs a header with `question,answer`; its other named columns become metadata. Markdown and
plain text are chunked along headings and paragraphs (`voicebot.kb.chunking`). Every record keeps the
line it came from, so an error can name the line to fix; a problem with a whole file (missing,
unreadable, a bad header) raises `FileRejected`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from voicebot.kb.chunking import chunk_text
from voicebot.kb.models import MAX_ANSWER_BYTES, MAX_QUESTION_BYTES, FileRejected, Record, RowError

# File types `ingest` reads, by lower-case suffix.
SUPPORTED_SUFFIXES = (".csv", ".md", ".markdown", ".txt")


def unsupported_type(suffix: str) -> str:
    """The message for a file whose type `ingest` does not read."""
    *others, last = SUPPORTED_SUFFIXES
    return f"unsupported file type {suffix or '(none)'!r}: use {', '.join(others)} or {last}"


def parse_file(path: Path, source: str | None = None) -> tuple[list[Record], list[RowError]]:
    """Parse one file into records and per-row errors. Raises `FileRejected` for whole-file problems.

    Errors name `source` (default: the file's absolute path), which is what they are reported under.
    """
    source = source or str(path.resolve())
    if not path.is_file():
        raise FileRejected("no such file" if not path.exists() else "not a regular file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return parse_csv(path, source)
        if suffix in (".md", ".markdown"):
            return _checked(source, chunk_text(_read_text(path), markdown=True))
        if suffix == ".txt":
            return _checked(source, chunk_text(_read_text(path), markdown=False))
    except UnicodeDecodeError as exc:
        raise FileRejected(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise FileRejected(f"cannot read: {exc.strerror or exc}") from exc
    raise FileRejected(unsupported_type(suffix))


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8-sig")


def _checked(source: str, records: list[Record]) -> tuple[list[Record], list[RowError]]:
    good: list[Record] = []
    errors: list[RowError] = []
    for record in records:
        problem = _length_problem(record.question, record.answer) or _control_problem(record)
        if problem:
            errors.append(RowError(source, record.line, problem))
        else:
            good.append(record)
    return good, errors


def _length_problem(question: str, answer: str) -> str | None:
    if len(question.encode()) > MAX_QUESTION_BYTES:
        return f"question longer than {MAX_QUESTION_BYTES} bytes"
    if len(answer.encode()) > MAX_ANSWER_BYTES:
        return f"answer longer than {MAX_ANSWER_BYTES} bytes"
    return None


# C0 controls but tab, newline and CR; DEL; C1. A NUL breaks whatever hands the text on as a C string
# (the phrase cache's synthesis failed on every warm-up after one), and an ESC sequence reaches the
# terminal of whoever lists the entries. Tab, newline and CR are ordinary in a quoted CSV cell.
_CONTROL_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
PATH_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _control_char(text: str) -> str | None:
    """`text`'s first forbidden control character as U+XXXX, or None."""
    found = _CONTROL_CHAR.search(text)
    return f"U+{ord(found.group()):04X}" if found else None


def _control_problem(record: Record) -> str | None:
    cells = {"question": record.question, "answer": record.answer, **record.metadata}
    for name, value in cells.items():
        found = _control_char(value) if isinstance(value, str) else None
        if found:
            return f"control character {found} in {name}"
    return None


def parse_csv(path: Path, source: str | None = None) -> tuple[list[Record], list[RowError]]:
    """CSV with a header naming `question` and `answer`; other named columns go into metadata."""
    source = source or str(path.resolve())
    records: list[Record] = []
    errors: list[RowError] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = _csv_header(reader)
        next_line = reader.line_num + 1
        try:
            for row in reader:
                # A quoted field may span lines: report the line where the row starts.
                line, next_line = next_line, reader.line_num + 1
                if not any(cell.strip() for cell in row):
                    continue
                record = _csv_record(header, row, line)
                if isinstance(record, str):
                    errors.append(RowError(source, line, record))
                else:
                    records.append(record)
        except csv.Error as exc:
            errors.append(RowError(source, next_line, f"unreadable CSV, rest of file skipped: {exc}"))
    return records, errors


def _csv_header(reader: Any) -> list[str]:
    row = next(reader, None)
    if row is None:
        raise FileRejected("empty file: expected a header line with question,answer columns", line=1)
    header = [name.strip().lower() for name in row]
    found = next(filter(None, map(_control_char, header)), None)
    if found:
        raise FileRejected(f"control character {found} in the header", line=1)
    missing = [name for name in ("question", "answer") if name not in header]
    if missing:
        raise FileRejected(f"header has no {' or '.join(missing)} column (found: {','.join(row)})", line=1)
    named = [name for name in header if name]
    if len(named) != len(set(named)):
        raise FileRejected("header names a column twice", line=1)
    return header


def _csv_record(header: list[str], row: list[str], line: int) -> Record | str:
    """A record, or the message saying what is wrong with the row."""
    if len(row) != len(header):
        return f"expected {len(header)} columns, got {len(row)}"
    cells = {name: value.strip() for name, value in zip(header, row, strict=True) if name}
    question, answer = cells.pop("question"), cells.pop("answer")
    missing = [name for name, value in (("question", question), ("answer", answer)) if not value]
    if missing:
        return f"missing {' and '.join(missing)}"
    record = Record(question, answer, line, cells)
    return _length_problem(question, answer) or _control_problem(record) or record
