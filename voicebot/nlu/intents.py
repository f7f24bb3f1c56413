"""What the caller wants, in one word: the built-in control intents (`voicebot.nlu.builtin_intents`,
checked first) plus an optional trained model.

The trained model maps an utterance to one of the labels of a `text,label` CSV. Its features are
TF-IDF word and character n-grams, plus the sentence embedding the knowledge base computes for the
same text (so a turn embeds once); a linear SVM on top. Its decision scores become a confidence
through a softmax whose temperature is fitted on held-out data at training time, and a prediction
below the threshold is no intent at all.
"""

from __future__ import annotations

import csv
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicebot.nlu.builtin_intents import NO_INTENT, IntentResult, builtin_intent

if TYPE_CHECKING:
    from voicebot.nlu.embeddings import Embedder

DEFAULT_THRESHOLD = 0.5
MODEL_FORMAT = 2


# ---------------------------------------------------------------- the trained model


class IntentDataError(ValueError):
    """A training or evaluation CSV that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    line: int


_LABEL_COLUMNS = ("label", "intent", "category")
_MIN_TEMPERATURE_EXAMPLES = 3


def read_examples(csv_path: Path, *, for_training: bool = True) -> list[Example]:
    """Rows of a `text,label` CSV (`intent` or `category` also name the label column)."""
    try:
        raw = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise IntentDataError(f"{csv_path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IntentDataError(f"{csv_path}: cannot read: {exc}") from None
    if not raw.strip():
        raise IntentDataError(f"{csv_path}: the file is empty; expected a header line 'text,label'")
    reader = csv.reader(raw.splitlines())
    header = [name.strip().lower() for name in next(reader)]
    text_col, label_col = _columns(csv_path, header)
    examples = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise IntentDataError(
                f"{csv_path}:{line}: {len(row)} columns but the header has {len(header)}; "
                "put text that holds commas in double quotes"
            )
        examples.append(_example(csv_path, line, row, text_col, label_col))
    if not examples:
        raise IntentDataError(f"{csv_path}: no examples after the header line")
    if for_training:
        _check_training_set(csv_path, examples)
    return examples


def _columns(csv_path: Path, header: list[str]) -> tuple[int, int]:
    if "text" not in header:
        raise IntentDataError(f"{csv_path}:1: no 'text' column in the header {header}; expected 'text,label'")
    label_col = next((header.index(name) for name in _LABEL_COLUMNS if name in header), None)
    if label_col is None:
        raise IntentDataError(
            f"{csv_path}:1: no 'label' column in the header {header}; expected 'text,label'"
        )
    return header.index("text"), label_col


def _example(csv_path: Path, line: int, row: list[str], text_col: int, label_col: int) -> Example:
    if len(row) <= max(text_col, label_col):
        raise IntentDataError(f"{csv_path}:{line}: expected at least {max(text_col, label_col) + 1} columns")
    text, label = row[text_col].strip(), row[label_col].strip()
    if not text:
        raise IntentDataError(f"{csv_path}:{line}: empty text")
    if not label:
        raise IntentDataError(f"{csv_path}:{line}: empty label")
    return Example(text, label, line)


def _check_training_set(csv_path: Path, examples: list[Example]) -> None:
    counts = Counter(example.label for example in examples)
    if len(counts) < 2:
        raise IntentDataError(f"{csv_path}: only one label ({next(iter(counts))!r}); need at least two")
    for example in examples:
        if counts[example.label] == 1:
            raise IntentDataError(
                f"{csv_path}:{example.line}: label {example.label!r} has only this one example; "
                "give it at least two"
            )


class _Features:
    """TF-IDF word and character n-grams, plus a weighted sentence embedding when there is one."""

    def __init__(self, embedding_weight: float = 2.0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.embedding_weight = embedding_weight
        self.words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        self.chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)

    def fit(self, texts: Sequence[str]) -> None:
        self.words.fit(texts)
        self.chars.fit(texts)

    def blocks(self, texts: Sequence[str], vectors: np.ndarray | None) -> list[Any]:
        """The feature blocks side by side: word n-grams, character n-grams, [embedding]."""
        out = [self.words.transform(texts), self.chars.transform(texts)]
        if vectors is not None:
            out.append(np.asarray(vectors, dtype=np.float32) * self.embedding_weight)
        return out

    def transform(self, texts: Sequence[str], vectors: np.ndarray | None) -> Any:
        import scipy.sparse as sp

        return sp.hstack([sp.csr_matrix(block) for block in self.blocks(texts, vectors)]).tocsr()


@dataclass
class IntentModel:
    """What `train` saves: the features, the linear weights per feature block, labels, temperature."""

    features: _Features
    weights: list[np.ndarray]  # one (block width, labels) matrix per feature block
    bias: np.ndarray
    labels: list[str]
    embedder_name: str | None
    temperature: float
    format: int = MODEL_FORMAT
    trained_on: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_classifier(
        cls, features: _Features, classifier: Any, embedder_name: str | None, temperature: float
    ) -> IntentModel:
        coef, bias = _per_label(classifier.coef_, classifier.intercept_)
        widths = [len(features.words.vocabulary_), len(features.chars.vocabulary_)]
        if embedder_name is not None:
            widths.append(coef.shape[1] - sum(widths))
        edges = np.cumsum([0, *widths])
        weights = [np.ascontiguousarray(coef[:, a:b].T) for a, b in itertools.pairwise(edges)]
        return cls(features, weights, bias, list(classifier.classes_), embedder_name, temperature)

    def scores(self, texts: Sequence[str], vectors: np.ndarray | None) -> np.ndarray:
        """The SVM's decision scores, shape (len(texts), labels), block by block: no matrix stacking,
        which was a third of the time for one utterance."""
        blocks = self.features.blocks(texts, vectors if self.embedder_name else None)
        total = np.tile(self.bias, (len(texts), 1))
        for block, weight in zip(blocks, self.weights, strict=True):
            total += np.asarray(block @ weight)
        return total

    def probabilities(self, texts: Sequence[str], vectors: np.ndarray | None) -> np.ndarray:
        return _softmax(self.scores(texts, vectors) * self.temperature)


def _per_label(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row of weights per label; a two-label SVM has one row, for the second label."""
    coef, intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
    if coef.shape[0] == 1:
        return np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    return coef, intercept


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class IntentClassifier:
    """Built-in control intents first, then the trained model (when there is one)."""

    def __init__(
        self, model: IntentModel | None = None, embedder: Embedder | None = None, threshold: float = 0.5
    ) -> None:
        self.model = model
        self.threshold = threshold
        self._embedder = embedder

    @classmethod
    def load(
        cls, path: Path | None, embedder: Embedder | None = None, threshold: float = DEFAULT_THRESHOLD
    ) -> IntentClassifier:
        """The model saved at `path`; a None path or a missing file gives built-ins only."""
        if path is None or not Path(path).is_file():
            return cls(None, None, threshold)
        model = load_model(Path(path))
        if model.embedder_name is not None:
            embedder = _matching_embedder(model.embedder_name, embedder, Path(path))
        return cls(model, embedder if model.embedder_name else None, threshold)

    @property
    def embedder_name(self) -> str | None:
        """The embedding model the trained model expects vectors from; None: it needs none."""
        return self.model.embedder_name if self.model else None

    @property
    def labels(self) -> list[str]:
        return list(self.model.labels) if self.model else []

    def classify(self, text: str, embedding: np.ndarray | None = None) -> IntentResult:
        """`embedding`: this text's vector from the same embedder (the KB's query vector), if at hand."""
        builtin = builtin_intent(text)
        if builtin.name or self.model is None or not text.strip():
            return builtin
        label, confidence = self.predict_one(text, embedding)
        if confidence < self.threshold:
            return NO_INTENT
        return IntentResult(label, round(confidence, 4), "model")

    def predict_one(self, text: str, embedding: np.ndarray | None = None) -> tuple[str, float]:
        """The model's best label and its confidence, whatever the threshold."""
        if self.model is None:
            raise RuntimeError("no trained intent model loaded")
        vectors = self._vectors([text], embedding)
        probs = self.model.probabilities([text], vectors)[0]
        best = int(probs.argmax())
        return self.model.labels[best], float(probs[best])

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The model's best label for each text (batched; no built-ins, no threshold)."""
        if self.model is None:
            raise RuntimeError("no trained intent model loaded")
        scores = self.model.scores(texts, self._vectors(list(texts), None))
        return [self.model.labels[i] for i in scores.argmax(axis=1)]

    def _vectors(self, texts: list[str], embedding: np.ndarray | None) -> np.ndarray | None:
        if self.model is None or self.model.embedder_name is None:
            return None
        if embedding is not None:
            return np.asarray(embedding, dtype=np.float32).reshape(len(texts), -1)
        if self._embedder is None:
            raise RuntimeError(f"the intent model needs the {self.model.embedder_name!r} embedder")
        return query_vectors(self._embedder, texts)


def _matching_embedder(name: str, embedder: Embedder | None, path: Path) -> Embedder:
    given = getattr(embedder, "name", None)
    if embedder is not None and (given is None or given == name):
        return embedder
    if embedder is not None:
        raise ValueError(f"{path}: the intent model was trained with the {name!r} embedder, not {given!r}")
    from voicebot.nlu.embeddings import lazy_embedder

    return lazy_embedder(name)


def query_vectors(embedder: Any, texts: list[str]) -> np.ndarray:
    """The vectors the knowledge base computes for a caller's words (e5 wants its "query: " prefix)."""
    method = getattr(embedder, "embed_query", None) or embedder.embed
    return np.asarray(method(texts), dtype=np.float32)


def load_model(path: Path) -> IntentModel:
    import joblib

    try:
        model = joblib.load(path)
    except Exception as exc:  # joblib raises whatever unpickling raises
        raise ValueError(f"{path}: not an intent model: {exc}") from exc
    if not isinstance(model, IntentModel) or model.format != MODEL_FORMAT:
        raise ValueError(f"{path}: not an intent model of format {MODEL_FORMAT}; train it again")
    return model


# ---------------------------------------------------------------- training and evaluation


@dataclass(frozen=True)
class TrainReport:
    out_path: Path
    examples: int
    labels: int
    embedder: str | None
    temperature: float
    seconds: float


def train(
    csv_path: Path,
    out_path: Path,
    embedder: Embedder | None = None,
    embedder_name: str | None = None,
    *,
    c: float = 1.0,
    seed: int = 0,
) -> TrainReport:
    """Fit a model on the CSV and save it to `out_path` (joblib). No embedder: TF-IDF only."""
    started = time.perf_counter()
    examples = read_examples(csv_path)
    if embedder is not None and embedder_name is None:
        embedder_name = getattr(embedder, "name", None) or "custom"
    texts = [e.text for e in examples]
    labels = [e.label for e in examples]
    vectors = query_vectors(embedder, texts) if embedder is not None else None
    model = fit_model(texts, labels, vectors, embedder_name if embedder is not None else None, c=c, seed=seed)
    model.trained_on = {"file": str(csv_path), "examples": len(texts)}
    save_model(model, out_path)
    return TrainReport(
        out_path, len(texts), len(model.labels), model.embedder_name, model.temperature,
        time.perf_counter() - started,
    )  # fmt: skip


def fit_model(
    texts: Sequence[str],
    labels: Sequence[str],
    vectors: np.ndarray | None,
    embedder_name: str | None,
    *,
    c: float = 1.0,
    seed: int = 0,
) -> IntentModel:
    temperature = _fit_temperature(texts, labels, vectors, c=c, seed=seed)
    features, classifier = _fit(texts, labels, vectors, c)
    return IntentModel.from_classifier(features, classifier, embedder_name, temperature)


def _fit(
    texts: Sequence[str], labels: Sequence[str], vectors: np.ndarray | None, c: float
) -> tuple[Any, Any]:
    from sklearn.svm import LinearSVC

    features = _Features()
    features.fit(texts)
    classifier = LinearSVC(C=c)
    classifier.fit(features.transform(texts, vectors), list(labels))
    return features, classifier


def _fit_temperature(
    texts: Sequence[str], labels: Sequence[str], vectors: np.ndarray | None, *, c: float, seed: int
) -> float:
    """The softmax temperature that makes held-out SVM scores honest probabilities (lowest log loss)."""
    from sklearn.model_selection import train_test_split

    counts = Counter(labels)
    if min(counts.values()) < _MIN_TEMPERATURE_EXAMPLES:
        return 10.0  # too few examples to hold any out; a middling temperature
    index = np.arange(len(texts))
    test_size = max(0.15, len(counts) / len(texts))
    fit_idx, held_idx = train_test_split(index, test_size=test_size, stratify=list(labels), random_state=seed)
    sub = [texts[i] for i in fit_idx]
    features, classifier = _fit(sub, [labels[i] for i in fit_idx], _rows(vectors, fit_idx), c)
    model = IntentModel.from_classifier(
        features, classifier, "held-out" if vectors is not None else None, 1.0
    )
    held = [texts[i] for i in held_idx]
    scores = model.scores(held, _rows(vectors, held_idx))
    held_labels = [labels[i] for i in held_idx]
    known = np.isin(held_labels, classifier.classes_)
    truth = np.searchsorted(classifier.classes_, held_labels)
    grid = np.geomspace(0.5, 100.0, 40)
    losses = [_log_loss(scores[known] * t, truth[known]) for t in grid]
    return float(grid[int(np.argmin(losses))])


def _rows(vectors: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    return None if vectors is None else vectors[index]


def _log_loss(z: np.ndarray, truth: np.ndarray) -> float:
    probs = _softmax(z)
    return float(-np.mean(np.log(probs[np.arange(len(truth)), truth] + 1e-12)))


def save_model(model: IntentModel, out_path: Path) -> None:
    import joblib

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    joblib.dump(model, tmp)
    tmp.replace(out_path)  # a running bot never loads half a file


@dataclass(frozen=True)
class EvalReport:
    examples: int
    accuracy: float
    macro_f1: float
    confused: list[tuple[str, str, int]]  # (true label, predicted label, count), most frequent first
    ms_mean: float  # one utterance at a time, embedding included
    ms_p50: float
    timed: int  # how many utterances the timing covers
    below_threshold: int  # predictions a classifier at its threshold would drop
    unknown_labels: list[str]  # labels in the file the model never saw


def evaluate(
    model: IntentClassifier | Path, csv_path: Path, *, timed: int = 200, embedder: Embedder | None = None
) -> EvalReport:
    """Score a trained model on a labelled CSV: accuracy, macro-F1, confusions, time per utterance."""
    classifier = (
        model if isinstance(model, IntentClassifier) else IntentClassifier.load(Path(model), embedder)
    )
    if classifier.model is None:
        raise ValueError(f"{model}: no such intent model file")
    examples = read_examples(csv_path, for_training=False)
    texts, truth = [e.text for e in examples], [e.label for e in examples]
    predicted = classifier.predict(texts)
    ms, confidences = time_single(classifier, texts[:timed])
    return EvalReport(
        examples=len(examples),
        accuracy=float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)])),
        macro_f1=_macro_f1(truth, predicted),
        confused=confused_pairs(truth, predicted),
        ms_mean=float(np.mean(ms)) if ms else 0.0,
        ms_p50=float(np.median(ms)) if ms else 0.0,
        timed=len(ms),
        below_threshold=sum(c < classifier.threshold for c in confidences),
        unknown_labels=sorted(set(truth) - set(classifier.labels)),
    )


def time_single(classifier: IntentClassifier, texts: Sequence[str]) -> tuple[list[float], list[float]]:
    """Milliseconds to classify each text on its own (as in a call), and the confidences."""
    ms, confidences = [], []
    for text in texts:
        started = time.perf_counter()
        _, confidence = classifier.predict_one(text)
        ms.append((time.perf_counter() - started) * 1000)
        confidences.append(confidence)
    return ms, confidences


def _macro_f1(truth: Sequence[str], predicted: Sequence[str]) -> float:
    from sklearn.metrics import f1_score

    # Over the labels of the file only: a label the model predicts but the file lacks is no class here.
    return float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0))


def confused_pairs(
    truth: Sequence[str], predicted: Sequence[str], top: int = 10
) -> list[tuple[str, str, int]]:
    pairs = Counter((t, p) for t, p in zip(truth, predicted, strict=True) if t != p)
    return [(t, p, n) for (t, p), n in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:top]]
