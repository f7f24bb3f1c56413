"""The knowledge base: FAQ entries and document chunks in Milvus, found by meaning and by words.

Files go in through `KnowledgeBase.ingest`: CSV (a header with `question,answer`; other columns become
metadata), Markdown and plain text (chunked along headings and paragraphs to answers that can be spoken).
Every entry remembers its source file and line, so re-ingesting a file replaces exactly that file's
entries, and errors can name the line to fix. A re-ingest replaces a file's entries only when the new
version parsed without a single bad row and was stored whole; until then the old entries stay, so a
broken upload cannot empty a working FAQ.

`uri` is a Milvus server URI or a milvus-lite `.db` path; a milvus-lite `.db` opens in one process at
a time (`KnowledgeBaseLocked`, see `voicebot.kb.connection`).

Search is hybrid: each entry's cosine similarity to the query in Milvus (`Hit.vector_score`) and its
BM25 score in this process (`Hit.lexical_score`) make the fused `Hit.score`; `voicebot.kb.lexical`
says how.

A collection remembers the embedder that built it (collection properties `voicebot.embedder` and
`voicebot.embed_mode`): vectors from two models do not compare, even at the same dimension, so opening
it with another embedder raises `KnowledgeBaseError` saying how to fix it. An empty collection simply
adopts the embedder that opens it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicebot.kb.connection import connect, is_local
from voicebot.kb.embedding import LEGACY_EMBEDDER, EmbedMode, embed_records
from voicebot.kb.lexical import LexicalIndex, hit_fields, refuse
from voicebot.kb.models import (
    MAX_ANSWER_BYTES,
    MAX_QUESTION_BYTES,
    MAX_SOURCE_BYTES,
    Entry,
    FileRejected,
    Hit,
    IngestReport,
    KnowledgeBaseError,
    Record,
    RowError,
)
from voicebot.kb.parsing import PATH_CONTROL_CHAR, parse_file
from voicebot.kb.thresholds import load_thresholds
from voicebot.nlu.embeddings import embedder_name, query_vectors

if TYPE_CHECKING:
    from voicebot.config import Settings
    from voicebot.nlu.embeddings import Embedder

DEMO_FAQ = Path(__file__).resolve().parents[1] / "demo" / "faq.csv"

# The `text` field holds an entry's question and answer (the VARCHAR limits: voicebot.kb.models).
_MAX_TEXT_BYTES = MAX_QUESTION_BYTES + MAX_ANSWER_BYTES + 8

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
        self._client = connect(uri)
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
            _EMBEDDER_PROPERTY: properties.get(_EMBEDDER_PROPERTY, LEGACY_EMBEDDER),
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
            if is_local(self.uri):
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
        found = PATH_CONTROL_CHAR.search(source)
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
            Hit(**{**hit_fields(hit), "lexical_score": lexical_by_id.get(hit.id, 0.0)})
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


# ---------------------------------------------------------------- wiring


def open_kb(settings: Settings, embedder: Embedder | None = None) -> KnowledgeBase:
    """The knowledge base the settings describe: their embedder (unless one is given) and the lexical
    weight `load_thresholds` gives."""
    if embedder is None:
        from voicebot.nlu.embeddings import load_embedder

        embedder = load_embedder(str(getattr(settings, "embedder", LEGACY_EMBEDDER)))
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
