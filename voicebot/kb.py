"""The knowledge base: FAQ entries and document chunks in Milvus, found by meaning.

Files go in through `KnowledgeBase.ingest`: CSV (a header with `question,answer`; other columns become
metadata), Markdown and plain text (chunked along headings and paragraphs to answers that can be spoken).
Every entry remembers its source file and line, so re-ingesting a file replaces exactly that file's
entries, and errors can name the line to fix.

`uri` is a Milvus server URI or a milvus-lite `.db` path. milvus-lite runs inside this process and holds
an exclusive lock on the `.db` folder until the process exits (or `close()`): a second process, such as
`voicebot kb ingest` beside a running server, cannot open the same path at the same time
(`KnowledgeBaseLocked`; the CLI then goes through the server's `/api/kb` endpoints instead).
"""

from __future__ import annotations

import asyncio
import csv
import fcntl
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from voicebot.config import Settings
    from voicebot.embeddings import Embedder

DEMO_FAQ = Path(__file__).resolve().parent / "demo" / "faq.csv"

# How an entry becomes a vector: its question alone, question and answer embedded as one text, or the
# normalized mean of the question's and the answer's vectors. bench/kb_threshold.py compares them on
# caller-style questions; "mean" ranked best and separated in-KB from out-of-KB questions best.
EmbedMode = Literal["question", "concat", "mean"]
EMBED_MODES: tuple[EmbedMode, ...] = ("question", "concat", "mean")

# VARCHAR limits, checked in UTF-8 bytes because a Milvus server counts bytes (milvus-lite counts
# characters), so a file that ingests locally also ingests on a server.
MAX_QUESTION_BYTES = 1_000
MAX_ANSWER_BYTES = 4_000
MAX_SOURCE_BYTES = 1_024
_MAX_TEXT_BYTES = MAX_QUESTION_BYTES + MAX_ANSWER_BYTES + 8

# File types `ingest` reads, by lower-case suffix.
SUPPORTED_SUFFIXES = (".csv", ".md", ".markdown", ".txt")

# About 20 seconds of speech: longer sections are split so one hit is one spoken answer.
MAX_CHUNK_CHARS = 320

# A Milvus query returns at most this many rows (limit + offset) in one call.
_QUERY_CAP = 16_384
_INSERT_BATCH = 1_000
_OUTPUT_FIELDS = ["id", "question", "answer", "source", "line", "metadata"]


class KnowledgeBaseError(RuntimeError):
    """The store cannot be opened or does not fit the embedder."""


class KnowledgeBaseLocked(KnowledgeBaseError):
    """A milvus-lite `.db` that another process holds open (one process per `.db`)."""


class FileRejected(Exception):
    """A problem with a whole file (missing, unreadable, bad header); its stored entries stay."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Record:
    """One parsed entry, before it is embedded and stored."""

    question: str
    answer: str
    line: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    id: int
    question: str
    answer: str
    source: str
    line: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    id: int
    question: str
    answer: str
    score: float  # cosine similarity, higher is better
    source: str
    line: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class RowError:
    source: str  # absolute path
    line: int | None  # None when the problem is the whole file
    message: str

    def __str__(self) -> str:
        name = Path(self.source).name
        return f"{name}:{self.line}: {self.message}" if self.line else f"{name}: {self.message}"


@dataclass
class IngestReport:
    added: dict[str, int] = field(default_factory=dict)  # absolute path -> entries now stored
    errors: list[RowError] = field(default_factory=list)

    @property
    def total_added(self) -> int:
        return sum(self.added.values())


# ---------------------------------------------------------------- parsing


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
        problem = _length_problem(record.question, record.answer)
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
    problem = _length_problem(question, answer)
    if problem:
        return problem
    return Record(question, answer, line, cells)


# Markdown and text chunking. A block is one paragraph with the heading path above it.

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}")
_SPOKEN_STOPS = (".", "!", "?", ":", ";")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # image -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # link -> its words
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(?<!\w)[*_](.+?)[*_](?!\w)"), r"\1"),
    (re.compile(r"<[^>]+>"), ""),
]


@dataclass
class _Block:
    headings: tuple[str, ...]
    line: int
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.parts)


def chunk_text(text: str, *, markdown: bool) -> list[Record]:
    """Split a document into phone-answer sized records, one section's paragraphs at a time."""
    records: list[Record] = []
    for headings, blocks in _sections(_blocks(text, markdown=markdown)):
        path = " > ".join(headings)
        # Paragraphs under one heading share a topic and may be joined; without one, each stands alone.
        groups = [blocks] if headings else [[block] for block in blocks]
        for group in groups:
            records.extend(_chunk_record(path, line, chunk) for line, chunk in _pack(group))
    return records


def _chunk_record(path: str, line: int, chunk: str) -> Record:
    question = path or _first_sentence(chunk)
    return Record(question, chunk, line, {"section": path} if path else {})


def _blocks(text: str, *, markdown: bool) -> Iterator[_Block]:
    headings: list[tuple[int, str]] = []
    block: _Block | None = None
    in_fence = False
    for number, raw in enumerate(text.splitlines(), start=1):
        if markdown and _FENCE.match(raw):
            # Code is not something to read out on the phone.
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _HEADING.match(raw) if markdown else None
        ends_block = not raw.strip() or heading or (markdown and _RULE.match(raw))
        if ends_block:
            if block and block.parts:
                yield block
            block = None
            if heading:
                level = len(heading.group(1))
                headings = [(lvl, title) for lvl, title in headings if lvl < level]
                headings.append((level, _clean_inline(heading.group(2))))
            continue
        content = _clean_line(raw) if markdown else raw.strip()
        if not content:
            continue
        if block is None:
            block = _Block(tuple(title for _, title in headings), number)
        starts_item = markdown and bool(_LIST_ITEM.match(raw) or raw.lstrip().startswith("|"))
        _append_part(block, content, starts_item=starts_item)
    if block and block.parts:
        yield block


def _append_part(block: _Block, content: str, *, starts_item: bool) -> None:
    # List items and table rows become sentences of their own, or the spoken answer runs them together.
    if starts_item and block.parts:
        block.parts[-1] = _join_sentences(block.parts[-1], content)
    else:
        block.parts.append(content)


def _clean_line(raw: str) -> str:
    line = raw.strip()
    if _TABLE_SEPARATOR.match(line) and set(line) <= set("|:- "):
        return ""
    line = re.sub(r"^(>\s?)+", "", line)
    line = _LIST_ITEM.sub("", line)
    if line.startswith("|"):
        line = ", ".join(cell.strip() for cell in line.strip("|").split("|") if cell.strip())
    return _clean_inline(line)


def _clean_inline(text: str) -> str:
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return re.sub(r"\s+", " ", text).strip()


def _sections(blocks: Iterable[_Block]) -> Iterator[tuple[tuple[str, ...], list[_Block]]]:
    current: list[_Block] = []
    for block in blocks:
        if current and block.headings != current[0].headings:
            yield current[0].headings, current
            current = []
        current.append(block)
    if current:
        yield current[0].headings, current


def _pack(blocks: list[_Block]) -> Iterator[tuple[int, str]]:
    """Join whole paragraphs up to MAX_CHUNK_CHARS; split longer paragraphs between sentences."""
    line, chunk = 0, ""
    for block in blocks:
        for piece in _pieces(block.text):
            if chunk and len(chunk) + 1 + len(piece) > MAX_CHUNK_CHARS:
                yield line, chunk
                chunk = ""
            if not chunk:
                line = block.line
            chunk = _join_sentences(chunk, piece) if chunk else piece
    if chunk:
        yield line, chunk


def _join_sentences(first: str, second: str) -> str:
    return f"{first} {second}" if first.endswith(_SPOKEN_STOPS) else f"{first}. {second}"


def _pieces(paragraph: str) -> list[str]:
    if len(paragraph) <= MAX_CHUNK_CHARS:
        return [paragraph]
    return [sentence for sentence in _SENTENCE_END.split(paragraph) if sentence]


def _first_sentence(text: str, limit: int = 200) -> str:
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + "…"


def embed_records(embedder: Embedder, records: list[Record], mode: EmbedMode) -> np.ndarray:
    """One unit vector per record, as `mode` says."""
    if not records:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    questions = [record.question for record in records]
    if mode == "question":
        return embedder.embed(questions)
    if mode == "concat":
        return embedder.embed([f"{r.question}\n{r.answer}" for r in records])
    vectors = embedder.embed(questions) + embedder.embed([record.answer for record in records])
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- storage


class KnowledgeBase:
    """Entries in one Milvus collection. Every method is thread-safe.

    From asyncio, call the blocking methods through `asyncio.to_thread` (or `search_async`): one
    search costs ~10 ms of embedding plus the Milvus round trip.
    """

    def __init__(
        self,
        uri: str,
        collection: str,
        embedder: Embedder,
        *,
        embed_mode: EmbedMode = "mean",
    ) -> None:
        self.uri = uri
        self.collection = collection
        self.embedder = embedder
        self.embed_mode: EmbedMode = embed_mode
        # One lock around the client: ingest's delete-then-insert must not interleave with a search.
        self.lock = threading.RLock()
        self._client = _connect(uri)
        self._ensure_collection()

    # -- setup

    def _ensure_collection(self) -> None:
        if self._client.has_collection(self.collection):
            self._check_dim()
            self._client.load_collection(self.collection)
            return
        self._client.create_collection(self.collection, schema=self._schema())
        # Not create_collection(index_params=...): its index wait polls a timestamp RPC milvus-lite
        # lacks, which costs a 0.5 s sleep and logs a server-side traceback. The collection is empty,
        # so there is nothing to wait for.
        self._client.create_index(self.collection, self._index_params(), sync=False)
        self._client.load_collection(self.collection)

    def _schema(self) -> Any:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.embedder.dim)
        schema.add_field("question", DataType.VARCHAR, max_length=MAX_QUESTION_BYTES)
        schema.add_field("answer", DataType.VARCHAR, max_length=MAX_ANSWER_BYTES)
        schema.add_field("text", DataType.VARCHAR, max_length=_MAX_TEXT_BYTES)
        schema.add_field("source", DataType.VARCHAR, max_length=MAX_SOURCE_BYTES)
        schema.add_field("line", DataType.INT64)
        schema.add_field("metadata", DataType.JSON)
        return schema

    def _index_params(self) -> Any:
        params = self._client.prepare_index_params()
        # Exact search is fast enough for FAQ-sized collections, and scores stay true cosines.
        params.add_index("vector", index_type="FLAT", metric_type="COSINE")
        return params

    def _check_dim(self) -> None:
        description = self._client.describe_collection(self.collection)
        for spec in description.get("fields", []):
            if spec.get("name") != "vector":
                continue
            dim = int(spec.get("params", {}).get("dim", 0))
            if dim != self.embedder.dim:
                raise KnowledgeBaseError(
                    f"collection {self.collection!r} at {self.uri} holds {dim}-dimensional vectors but the "
                    f"embedder makes {self.embedder.dim}: use another collection or re-create this one"
                )
            return
        raise KnowledgeBaseError(f"collection {self.collection!r} at {self.uri} has no vector field")

    def close(self) -> None:
        """Close the client, and for milvus-lite release the `.db` lock so another process can open it.

        Any other KnowledgeBase on the same `.db` in this process stops working too.
        """
        with self.lock:
            self._client.close()
            if _is_local(self.uri):
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)

    # -- writing

    def ingest(self, paths: Iterable[str | Path]) -> IngestReport:
        """Store each file's entries, replacing what that file stored before.

        Bad rows are reported and skipped. A whole-file problem (missing, unsupported, bad header)
        leaves that file's earlier entries in place; other files go on.
        """
        return self.ingest_as((path, str(Path(path).resolve())) for path in paths)

    def ingest_as(self, files: Iterable[tuple[str | Path, str]]) -> IngestReport:
        """`ingest` for (path, source) pairs: each file is read from `path` but its entries are stored,
        replaced and its errors named under `source`. For a copy of a file, such as an upload, that
        stands for the original at `source` (by convention an absolute path)."""
        report = IngestReport()
        for path, source in files:
            self._ingest_file(Path(path), source, report)
        return report

    def _ingest_file(self, path: Path, source: str, report: IngestReport) -> None:
        if len(source.encode()) > MAX_SOURCE_BYTES:
            report.errors.append(RowError(source, None, f"path longer than {MAX_SOURCE_BYTES} bytes"))
            return
        try:
            records, errors = parse_file(path, source)
        except FileRejected as exc:
            report.errors.append(RowError(source, exc.line, str(exc)))
            return
        report.errors.extend(errors)
        # Embed before deleting, so a failure here leaves the old entries intact.
        vectors = embed_records(self.embedder, records, self.embed_mode)
        rows = [
            {
                "vector": vector.tolist(),
                "question": record.question,
                "answer": record.answer,
                "text": f"{record.question}\n{record.answer}",
                "source": source,
                "line": record.line,
                "metadata": record.metadata,
            }
            for record, vector in zip(records, vectors, strict=True)
        ]
        with self.lock:
            self._delete_source(source)
            for start in range(0, len(rows), _INSERT_BATCH):
                self._client.insert(self.collection, rows[start : start + _INSERT_BATCH])
        report.added[source] = len(rows)

    def remove(self, path: str | Path) -> None:
        """Delete every entry that came from this file."""
        with self.lock:
            self._delete_source(str(Path(path).resolve()))

    def _delete_source(self, source: str) -> None:
        self._client.delete(self.collection, filter=f"source == {_literal(source)}")

    # -- reading

    def count(self) -> int:
        with self.lock:
            rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def entries(self) -> list[Entry]:
        """All entries in file and line order (up to 16,384, a Milvus query's limit)."""
        with self.lock:
            rows = self._client.query(
                self.collection, filter="", output_fields=_OUTPUT_FIELDS, limit=_QUERY_CAP
            )
        entries = [_entry(row) for row in rows]
        return sorted(entries, key=lambda e: (e.source, e.line, e.id))

    def search(self, text: str, k: int = 3) -> list[Hit]:
        """The k entries closest in meaning to `text`, best first."""
        if not text.strip() or k < 1:
            return []
        vector = self.embedder.embed([text])[0]
        with self.lock:
            results = self._client.search(
                self.collection,
                data=[vector.tolist()],
                limit=k,
                anns_field="vector",
                output_fields=_OUTPUT_FIELDS[1:],
                search_params={"metric_type": "COSINE"},
            )
        return [_hit(hit) for hit in results[0]] if results else []

    async def search_async(self, text: str, k: int = 3) -> list[Hit]:
        """`search` off the event loop thread."""
        return await asyncio.to_thread(self.search, text, k)


def _entry(row: dict[str, Any]) -> Entry:
    return Entry(
        id=int(row["id"]),
        question=row["question"],
        answer=row["answer"],
        source=row["source"],
        line=int(row["line"]),
        metadata=dict(row.get("metadata") or {}),
    )


def _hit(hit: Any) -> Hit:
    entity = hit["entity"]
    return Hit(
        id=int(hit["id"]),
        question=entity["question"],
        answer=entity["answer"],
        score=float(hit["distance"]),
        source=entity["source"],
        line=int(entity["line"]),
        metadata=dict(entity.get("metadata") or {}),
    )


def _literal(value: str) -> str:
    # A JSON string is a valid Milvus expression string literal, with quotes and backslashes escaped.
    return json.dumps(value, ensure_ascii=False)


def _is_local(uri: str) -> bool:
    return uri.endswith(".db") and "://" not in uri


class _QuietLockFailure(logging.Filter):
    """Drops milvus-lite's traceback for a `.db` another process holds: `_open_failure` says it better."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while error is not None:
            if type(error).__name__ == "DataDirLockedError":
                return False
            error = error.__cause__
        return True


_QUIET_LOCK_FAILURE = _QuietLockFailure()


def _connect(uri: str) -> MilvusClient:
    from pymilvus import MilvusClient

    if _is_local(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("milvus_lite.server_manager").addFilter(_QUIET_LOCK_FAILURE)  # idempotent
    try:
        return MilvusClient(uri)
    except Exception as exc:
        raise _open_failure(uri, exc) from exc


def _open_failure(uri: str, exc: Exception) -> KnowledgeBaseError:
    if _is_local(uri) and _locked_elsewhere(Path(uri) / "LOCK"):
        return KnowledgeBaseLocked(
            f"cannot open the knowledge base at {uri}: another process holds it (milvus-lite allows one "
            "process per .db; stop the server, or point VOICEBOT_MILVUS_URI at a Milvus server)"
        )
    detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return KnowledgeBaseError(f"cannot open the knowledge base at {uri}: {detail}")


def _locked_elsewhere(lock_file: Path) -> bool:
    if not lock_file.exists():
        return False
    with lock_file.open("rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


# ---------------------------------------------------------------- wiring


def open_kb(settings: Settings, embedder: Embedder | None = None) -> KnowledgeBase:
    """The knowledge base the settings describe, with the default embedder unless one is given."""
    if embedder is None:
        from voicebot.embeddings import load_embedder

        embedder = load_embedder()
    return KnowledgeBase(settings.resolved_milvus_uri, settings.kb_collection, embedder)


def ensure_demo(kb: KnowledgeBase) -> IngestReport | None:
    """Load the bundled Northwind Shop FAQ into an empty knowledge base; None if it had entries."""
    if kb.count() > 0:
        return None
    return kb.ingest([DEMO_FAQ])
