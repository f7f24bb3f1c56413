"""The knowledge base: FAQ entries and document chunks in Milvus, found by meaning and by words.

One module a concern:

- `models`: what it holds and reports (`Record`, `Entry`, `Hit`, `RowError`, `IngestReport`), the
  byte limits of a stored entry, and its errors (`KnowledgeBaseError`, `KnowledgeBaseLocked`,
  `FileRejected`).
- `parsing`: CSV, Markdown and text files read into records, with an error for each bad row.
- `chunking`: Markdown and text cut into answers a phone call can speak.
- `embedding`: how an entry becomes a vector (`embed_records`, the embed modes).
- `lexical`: BM25 over the entries (`LexicalIndex`), and how it is fused with the vector score.
- `connection`: the Milvus client, and telling a milvus-lite `.db` another process holds.
- `store`: `KnowledgeBase`, the entries in one Milvus collection (ingest, remove, search),
  `open_kb` and `ensure_demo`.
- `thresholds`: the answer, related and clarify thresholds and where they come from
  (`load_thresholds`).
- `calibration`: those values chosen from labelled caller questions (`voicebot kb calibrate`).

The names below are re-exported here, so `from voicebot.kb import KnowledgeBase` works as well as
`from voicebot.kb.store import KnowledgeBase`.
"""

from voicebot.kb.calibration import (
    LEXICAL_WEIGHTS,
    TARGET_PRECISION,
    AnswerRates,
    Calibration,
    CalibrationRow,
    ClarifyRates,
    Observation,
    RelatedRates,
    WeightResult,
    answer_rates,
    calibrate,
    clarify_rates,
    observe,
    read_calibration_csv,
    related_rates,
    write_thresholds,
)
from voicebot.kb.chunking import MAX_CHUNK_CHARS, chunk_text
from voicebot.kb.embedding import EMBED_MODES, EmbedMode, embed_records
from voicebot.kb.lexical import LexicalIndex, fuse, lexical_tokens, refuse
from voicebot.kb.models import (
    MAX_ANSWER_BYTES,
    MAX_QUESTION_BYTES,
    MAX_SOURCE_BYTES,
    Entry,
    FileRejected,
    Hit,
    IngestReport,
    KnowledgeBaseError,
    KnowledgeBaseLocked,
    Record,
    RowError,
)
from voicebot.kb.parsing import SUPPORTED_SUFFIXES, parse_csv, parse_file, unsupported_type
from voicebot.kb.store import (
    DEFAULT_LEXICAL_WEIGHT,
    DEMO_FAQ,
    SEARCH_CANDIDATES,
    KnowledgeBase,
    ensure_demo,
    open_kb,
)
from voicebot.kb.thresholds import (
    BUILTIN_THRESHOLDS,
    DEFAULT_THRESHOLDS,
    THRESHOLDS_FILE,
    Thresholds,
    load_thresholds,
    thresholds_path,
)

__all__ = [
    "BUILTIN_THRESHOLDS",
    "DEFAULT_LEXICAL_WEIGHT",
    "DEFAULT_THRESHOLDS",
    "DEMO_FAQ",
    "EMBED_MODES",
    "LEXICAL_WEIGHTS",
    "MAX_ANSWER_BYTES",
    "MAX_CHUNK_CHARS",
    "MAX_QUESTION_BYTES",
    "MAX_SOURCE_BYTES",
    "SEARCH_CANDIDATES",
    "SUPPORTED_SUFFIXES",
    "TARGET_PRECISION",
    "THRESHOLDS_FILE",
    "AnswerRates",
    "Calibration",
    "CalibrationRow",
    "ClarifyRates",
    "EmbedMode",
    "Entry",
    "FileRejected",
    "Hit",
    "IngestReport",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "KnowledgeBaseLocked",
    "LexicalIndex",
    "Observation",
    "Record",
    "RelatedRates",
    "RowError",
    "Thresholds",
    "WeightResult",
    "answer_rates",
    "calibrate",
    "chunk_text",
    "clarify_rates",
    "embed_records",
    "ensure_demo",
    "fuse",
    "lexical_tokens",
    "load_thresholds",
    "observe",
    "open_kb",
    "parse_csv",
    "parse_file",
    "read_calibration_csv",
    "refuse",
    "related_rates",
    "thresholds_path",
    "unsupported_type",
    "write_thresholds",
]
