"""What the knowledge base holds and reports: entries, search hits, ingest reports, and its errors.

A `Record` is one parsed entry before it is embedded and stored (`voicebot.kb.parsing`); an `Entry`
is one stored in Milvus and a `Hit` one a search found (`voicebot.kb.store`). The byte limits are
those of the Milvus fields an entry is stored in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# VARCHAR limits, checked in UTF-8 bytes because a Milvus server counts bytes (milvus-lite counts
# characters), so a file that ingests locally also ingests on a server.
MAX_QUESTION_BYTES = 1_000
MAX_ANSWER_BYTES = 4_000
MAX_SOURCE_BYTES = 1_024


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
    score: float  # the fused score, 0..1, higher is better (see voicebot.kb.lexical)
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
