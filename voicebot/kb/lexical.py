"""The words side of the knowledge base's hybrid search (BM25), and how it is fused with the vectors.

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
The BM25 index lives in the process that searches: `KnowledgeBase` builds it when it opens and
rebuilds it after each `ingest` and `remove` (`refresh()` rebuilds it after another process changed a
shared Milvus server).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from voicebot.kb.models import Entry, Hit

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
    return Hit(**{**hit_fields(hit), "score": score})


def hit_fields(hit: Hit) -> dict[str, Any]:
    return {name: getattr(hit, name) for name in hit.__dataclass_fields__}
