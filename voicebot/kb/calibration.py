"""Calibration: the lexical weight and the thresholds chosen from labelled caller questions.

`voicebot kb calibrate FILE.csv` reads rows of `text,expected` (`read_calibration_csv`), searches each
once (`observe`), replays the hits at every lexical weight (`calibrate`) and writes the values where
`load_thresholds` finds them (`write_thresholds`, DATA_DIR/kb-thresholds.json).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicebot.kb.lexical import refuse
from voicebot.kb.models import FileRejected, Hit, KnowledgeBaseError
from voicebot.kb.store import SEARCH_CANDIDATES

if TYPE_CHECKING:
    from voicebot.kb.store import KnowledgeBase

TARGET_PRECISION = 0.95
# Lexical weights the calibration tries; 0 is pure vector search.
LEXICAL_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# Threshold and margin grids: fine enough that the chosen value sits within 0.005 of the best.
_THRESHOLD_GRID = tuple(round(0.10 + 0.005 * i, 3) for i in range(171))  # 0.10 .. 0.95
_MARGIN_GRID = tuple(round(0.005 * i, 3) for i in range(31))  # 0 .. 0.15
# How many hits each calibration query keeps: enough to re-rank at every weight as a search would.
_CALIBRATION_K = 2 * SEARCH_CANDIDATES


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
