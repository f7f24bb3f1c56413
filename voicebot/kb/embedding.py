"""How a knowledge-base entry becomes a vector: the embed modes, and `embed_records`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from voicebot.kb.models import Record
from voicebot.nlu.embeddings import passage_vectors, query_vectors

if TYPE_CHECKING:
    from voicebot.nlu.embeddings import Embedder

# How an entry becomes a vector: its question alone, question and answer embedded as one text, or the
# normalized mean of the question's and the answer's vectors. bench/kb_threshold.py compares them on
# caller-style questions; "mean" ranked best and separated in-KB from out-of-KB questions best.
EmbedMode = Literal["question", "concat", "mean"]
EMBED_MODES: tuple[EmbedMode, ...] = ("question", "concat", "mean")
# Collections made before the embedder was recorded were all built by MiniLM in "mean" mode.
LEGACY_EMBEDDER = "minilm"


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
