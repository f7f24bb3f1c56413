"""What the caller wants, in one word: built-in control intents plus an optional trained model.

Built-ins (human, goodbye, repeat, start_over, wait, no, yes, thanks) need no training: they are
rules over the normalised transcript, written for what ASR produces ("uh yeah sure", "bye bye",
"can you say that again"). They run first because they steer the call itself.

The trained model maps an utterance to one of the labels of a `text,label` CSV. Its features are
TF-IDF word and character n-grams, plus the sentence embedding the knowledge base computes for the
same text (so a turn embeds once); a linear SVM on top. Its decision scores become a confidence
through a softmax whose temperature is fitted on held-out data at training time, and a prediction
below the threshold is no intent at all.
"""

from __future__ import annotations

import csv
import itertools
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from voicebot.nlu.embeddings import Embedder

BUILTIN_INTENTS = ("human", "goodbye", "repeat", "start_over", "wait", "no", "yes", "thanks")
DEFAULT_THRESHOLD = 0.5
MODEL_FORMAT = 2


@dataclass(frozen=True)
class IntentResult:
    name: str  # "" when nothing matched confidently
    confidence: float  # 0..1
    source: str  # "builtin" | "model" | "none"


NO_INTENT = IntentResult("", 0.0, "none")

# ---------------------------------------------------------------- built-in intents

# Assent noises, before the hesitation filter would take "mm" and "uh" out of them.
_ASSENT_NOISES = re.compile(r"\b(?:mm+[ -]?hmm+|m+hm+|uh[ -]huh|yeah yeah)\b")
_FILLERS = re.compile(r"\b(?:u+h+|u+m+|uhm+|e+r+m*|h+m+|a+h+|o+h+|mm+)\b")
# Phrases that mean "okay" although they start with "no"; rewritten before the no/yes rules look.
_NOT_NO = re.compile(r"\bno (?:problem|worries|bother)\b")

_PEOPLE = (
    r"(?:a |an |the |some |your |real |live |actual |human |customer service |customer support )*"
    r"(?:human(?: being)?|person|people|agent|representative|rep|operator|somebody|someone|"
    r"manager|supervisor|advisor|adviser)"
)
_HUMAN = re.compile(
    rf"\b(?:speak|talk|chat)(?:ing)?\s+(?:to|with)\s+{_PEOPLE}\b"
    rf"|\b(?:connect|transfer|put)\s+me\s+(?:to|with|through\s+to|through)\s+{_PEOPLE}\b"
    rf"|\b(?:want|need|get|like|give|find)\s+(?:me\s+)?(?:to\s+(?:speak|talk)\s+to\s+)?{_PEOPLE}\b"
    r"|\b(?:human|operator|representative|customer service|real person|live agent|live person)\b"
    r"|^(?:an?\s+)?agent(?:\s+please)?$"
)
# A negation or a question about the bot shortly before a match cancels it: "I don't want a human",
# "are you a real person".
_HUMAN_CANCEL = re.compile(
    r"\b(?:don't|dont|do not|doesn't|does not|didn't|did not|not|never|no need|without|are you|"
    r"is this|am i|is that|you're not|you are not)\b"
)
_NEGATION_WINDOW_WORDS = 4

_GOODBYE = re.compile(
    r"\b(?:good ?bye|bye(?: bye)*|bye now|see (?:you|ya)(?: later)?|talk (?:to you )?later|take care|"
    r"have an? (?:nice|good|great|lovely) (?:day|one|evening|night|afternoon|weekend)|"
    r"(?:you can |please )?hang up(?: now)?|"
    r"that(?:'s| is| will be|'ll be) (?:all|everything)(?: for (?:now|today))?|"
    r"that's it for (?:now|today)|nothing else|i'm done|i am done|we're done|no more questions)\b"
)
_REPEAT = re.compile(
    r"\b(?:say|said) (?:that|it|this|again)(?: again| one more time)?\b"
    r"|\brepeat(?: that| this| it| yourself| again| please|"
    r" the (?:question|last part|answer|number|message))?$"
    r"|\b(?:can|could|would|will) you (?:please )?repeat\b"
    r"|\bcome again\b|\bpardon(?: me)?\b|\bone more time\b|\bsay again\b|\bi missed (?:that|it)\b"
    r"|\b(?:didn't|did not|couldn't|could not|can't|cannot) (?:quite )?(?:catch|hear|understand) "
    r"(?:that|you|it|what you said)\b"
    r"|\bwhat (?:did|was) (?:you|that)(?: just)?(?: say| said)?$|\bwhat was that\b"
    r"|^(?:(?:sorry|wait|oh|i'm sorry) )*(?:what|huh|eh|excuse me|sorry)$"
)
_START_OVER = re.compile(
    r"\b(?:start|begin)(?:ing)? (?:(?:this|the|it) (?:call |conversation )?)?(?:all )?(?:over|again|afresh)\b"
    r"|\b(?:start|go back to|back to|from) (?:the )?(?:very )?(?:beginning|start|top|main menu)\b"
    r"|\bmain menu\b|^restart(?: (?:the|this) (?:call|conversation))?$|\bstart from scratch\b"
)

# Intents that stand for the whole utterance: the phrase, plus at most a few leftover words.
_YES_STRONG = (
    r"yes|yeah|yea|yep|yup|ya|yah|sure|of course|certainly|absolutely|definitely|exactly|correct|"
    r"affirmative|uh huh|mm hmm|mhm|uh-huh|mm-hmm|please do|go ahead|go for it|sounds good|"
    r"that's right|that is right|that's correct|that is correct|that's it|that's the one|"
    r"i do|i did|it is|i am|i would|i guess so|i think so|why not|yes please|right"
)
_YES_WEAK = r"ok|okay|k|alright|all right|fine|cool|great|perfect|very good|that's good|sounds fine|very well"
_NO = (
    r"no|nope|nah|no way|not really|not now|not at all|negative|i don't think so|i do not think so|"
    r"no it isn't|no it's not|that's wrong|that is wrong|that's not right|that is not right|"
    r"that's incorrect|that is incorrect|"
    r"i don't|i do not|i didn't|i'm not|i am not|never mind|nevermind|don't bother|not today"
)
_THANKS = r"thanks|thank you|thank you very much|thanks a lot|thanks so much|many thanks|cheers|" + (
    r"much appreciated|appreciate it|i appreciate it|appreciate that|ta"
)
_WAIT = (
    r"wait|hold on|hang on|hold up|hold please|hold the line|one (?:moment|sec|second|minute|min)|"
    r"(?:just|wait|give me|gimme) an? (?:moment|sec|second|minute|min|bit)|a moment|"
    r"let me (?:check|see|look|find|get|grab|think)|bear with me|just a tick|hang tight|"
    r"(?:a )?(?:moment|second|sec|minute) please|a (?:second|sec|minute|bit)"
)
# Words that may ride along with any of those without changing what they mean.
_SOFT = (
    r"please|then|so|well|just|really|sir|ma'am|madam|now|oh|ah|actually|and|but|thanks|thank you|"
    r"very much|a lot|that's|that is|it|for that"
)


def _phrase_set(alternatives: str) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{alternatives})\b")


_NO_THEN_NEGATION = re.compile(r"^(?:no|nope|nah)\b.*\b(?:don't|do not|not|isn't|wasn't|never)\b")
_SHORT_INTENTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("wait", _phrase_set(_WAIT)),
    ("no", _phrase_set(_NO)),
    ("yes", _phrase_set(f"{_YES_STRONG}|{_YES_WEAK}")),
    ("thanks", _phrase_set(_THANKS)),
)
_YES_STRONG_RE = _phrase_set(_YES_STRONG)
_SOFT_RE = _phrase_set(_SOFT)
_MAX_LEFTOVER_WORDS = 1


def normalize(text: str) -> str:
    """Lower case, plain apostrophes, no punctuation or hesitations, single spaces."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[^\w\s'-]", " ", text)
    text = re.sub(r"(?<!\w)['-]|['-](?!\w)", " ", text)  # keep "don't" and "uh-huh", drop stray quotes
    text = _ASSENT_NOISES.sub(" yes ", text)
    text = _FILLERS.sub(" ", text)
    return " ".join(text.split())


def asks_for_human(text: str) -> bool:
    """True when the caller asks to be put through to a person (and does not say they don't want one)."""
    return _matches_unnegated(_HUMAN, normalize(text))


def _matches_unnegated(pattern: re.Pattern[str], text: str) -> bool:
    for match in pattern.finditer(text):
        before = text[: match.start()].split()[-_NEGATION_WINDOW_WORDS:]
        if not _HUMAN_CANCEL.search(" ".join(before)):
            return True
    return False


def builtin_intent(text: str) -> IntentResult:
    """The control intent in `text`, or NO_INTENT. Earlier intents in BUILTIN_INTENTS win ties."""
    norm = _NOT_NO.sub("okay", normalize(text))
    if not norm:
        return NO_INTENT
    if _matches_unnegated(_HUMAN, norm):
        return IntentResult("human", 0.95, "builtin")
    if _START_OVER.search(norm) and not _negated_start(norm):
        return IntentResult("start_over", 0.9, "builtin")
    if _REPEAT.search(norm):
        return IntentResult("repeat", 0.9, "builtin")
    if _GOODBYE.search(norm) and not re.search(r"\b(?:don't|do not|not) hang up\b", norm):
        return IntentResult("goodbye", 0.9, "builtin")
    if norm == "know":  # ASR writes a lone "no" as "know" often enough; nobody answers just "know"
        return IntentResult("no", 0.6, "builtin")
    best = _best_short_intent(norm)
    if not best.name and _NO_THEN_NEGATION.match(norm):
        return IntentResult("no", 0.7, "builtin")  # "no, I don't want to ...", "no, that's not it"
    return best


def _negated_start(norm: str) -> bool:
    return bool(re.search(r"\b(?:don't|do not|not) (?:want to )?(?:start|begin|go back)\b", norm))


def _best_short_intent(norm: str) -> IntentResult:
    best = NO_INTENT
    for name, phrases in _SHORT_INTENTS:
        if not phrases.search(norm):
            continue
        confidence = _short_confidence(name, phrases, norm)
        if confidence > best.confidence:
            best = IntentResult(name, confidence, "builtin")
    return best


def _short_confidence(name: str, phrases: re.Pattern[str], norm: str) -> float:
    """How surely `norm` is just this intent: by the words left once its phrases are taken out."""
    rest = phrases.sub(" ", norm)
    if name != "thanks":
        rest = _SOFT_RE.sub(" ", rest)
    else:
        rest = _SOFT_RE.sub(" ", _phrase_set(_YES_WEAK).sub(" ", rest))
    leftover = len(rest.split())
    if leftover > _MAX_LEFTOVER_WORDS:
        return 0.0
    confidence = (0.95, 0.8)[leftover]
    if name == "yes" and not _YES_STRONG_RE.search(norm):
        confidence -= 0.15  # "okay" alone is as often an acknowledgement as an answer
    if name == "no" and re.search(r"\bi (?:don't|do not) know\b|\bnot sure\b", norm):
        return 0.0
    return confidence


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
