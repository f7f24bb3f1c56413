"""Intents: built-in control intents on ASR-style text, the trained model, and the `intents` CLI."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from testkit.cli import run_cli_in
from voicebot.nlu.builtin_intents import BUILTIN_INTENTS, asks_for_human, builtin_intent
from voicebot.nlu.intents import IntentClassifier, IntentDataError, evaluate, read_examples, train

BUILTIN_CASES = {
    "human": [
        "I want to talk to a human",
        "Agent.",
        "agent please",
        "representative",
        "representative representative",
        "Can I speak to someone please",
        "put me through to customer service",
        "please transfer me to an operator",
        "I need to talk to a manager",
        "uh can I get a real person",
        "no, I want a human",
        "I don't want to talk to a robot, get me a human",
        "connect me with a live agent",
    ],
    "goodbye": [
        "bye bye",
        "Okay, thank you, bye!",
        "goodbye",
        "no that's all thanks",
        "that's everything, have a nice day",
        "you can hang up now",
        "nothing else",
    ],
    "repeat": [
        "can you say that again",
        "Could you repeat that please?",
        "sorry?",
        "what?",
        "wait what",
        "Pardon?",
        "Sorry, I didn't catch that",
        "what did you say",
        "come again",
        "one more time please",
    ],
    "start_over": ["start over", "Can we start again?", "let's go back to the beginning", "main menu"],
    "wait": ["hold on a second", "one moment please", "hang on", "let me check", "give me a minute"],
    "yes": [
        "uh yeah sure",
        "yes please",
        "Yes.",
        "yep",
        "mm-hmm",
        "uh-huh",
        "that's correct",
        "yeah that's right thanks",
        "sure go ahead",
        "okay",
        "no problem",
    ],
    "no": [
        "no thanks",
        "No.",
        "nope",
        "not really",
        "no no no",
        "yeah no",
        "know",
        "no, I don't want to talk to an agent",
        "I don't think so",
    ],
    "thanks": ["thank you", "okay thanks", "thanks a lot", "great thank you", "cheers"],
}

NOT_BUILTIN = [
    "I don't want a human",
    "I don't need an agent I need my card",
    "are you a real person?",
    "I know",
    "I don't know",
    "I'm not sure",
    "good morning",
    "wrong address",
    "the right amount",
    "how long do I have to wait for my card",
    "I've been waiting for my card for two weeks",
    "what is my balance",
    "how do I reset my PIN",
    "I'd like to repeat my last payment",
    "don't hang up",
    "yes my order number is 4 5 7 1 2 and it has not arrived yet",
    "",
    "   ",
]


@pytest.mark.parametrize(
    ("text", "expected"), [(text, name) for name, texts in BUILTIN_CASES.items() for text in texts]
)
def test_builtin_intents(text: str, expected: str) -> None:
    result = builtin_intent(text)
    assert (result.name, result.source) == (expected, "builtin")
    assert 0.5 <= result.confidence <= 1.0


@pytest.mark.parametrize("text", NOT_BUILTIN)
def test_not_a_builtin_intent(text: str) -> None:
    assert builtin_intent(text).name == ""


def test_every_builtin_is_tested() -> None:
    assert set(BUILTIN_CASES) == set(BUILTIN_INTENTS)


def test_asks_for_human() -> None:
    assert asks_for_human("Can I talk to a real person?")
    assert asks_for_human("OPERATOR")
    assert not asks_for_human("I don't want a human")
    assert not asks_for_human("Where is my order?")


def test_no_model_gives_builtins_only(tmp_path: Path) -> None:
    for classifier in (IntentClassifier.load(None), IntentClassifier.load(tmp_path / "missing.joblib")):
        assert classifier.embedder_name is None
        assert classifier.classify("bye").name == "goodbye"
        result = classifier.classify("where is my parcel")
        assert (result.name, result.source) == ("", "none")


SHOP = {
    "order_status": [
        "where is my order",
        "has my order shipped yet",
        "when will my package arrive",
        "track my parcel",
        "my delivery is late",
        "what's the status of my order",
    ],
    "refund": [
        "I want my money back",
        "how do I get a refund",
        "refund this item please",
        "can I return this for a refund",
        "I'd like a refund on my purchase",
        "when will I get my refund",
    ],
    "opening_hours": [
        "what time do you open",
        "are you open on sunday",
        "what are your opening hours",
        "when do you close today",
        "what time does the store open",
        "are you open late tonight",
    ],
    "change_address": [
        "I need to change my delivery address",
        "update my shipping address",
        "I moved, change my address",
        "send it to a different address",
        "can I change where the parcel goes",
        "wrong address on my order",
    ],
}


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def shop_rows() -> list[tuple[str, str]]:
    return [(text, label) for label, texts in SHOP.items() for text in texts]


def test_model_tfidf_only_in_process(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "shop.csv", shop_rows())
    report = train(data, tmp_path / "model.joblib")
    assert (report.examples, report.labels, report.embedder) == (24, 4, None)

    classifier = IntentClassifier.load(tmp_path / "model.joblib", threshold=0.3)
    assert classifier.embedder_name is None
    result = classifier.classify("where's my order")
    assert (result.name, result.source) == ("order_status", "model")
    assert 0.3 <= result.confidence <= 1.0
    # Control intents come first, whatever the model would say.
    assert classifier.classify("can I talk to a human about my refund").name == "human"
    # Below the threshold there is no intent.
    strict = IntentClassifier.load(tmp_path / "model.joblib", threshold=0.999)
    assert strict.classify("where's my order") == builtin_intent("")

    scores = evaluate(classifier, data, timed=5)
    assert scores.accuracy == 1.0 and scores.macro_f1 == 1.0 and scores.confused == []
    assert scores.timed == 5 and scores.ms_p50 > 0


def test_train_and_eval_through_the_cli(tmp_path: Path) -> None:
    """Default embedder (MiniLM, as the knowledge base) and default model path under DATA_DIR."""
    data_dir = tmp_path / "data"
    train_csv = write_csv(tmp_path / "train.csv", shop_rows())
    held_out = write_csv(
        tmp_path / "test.csv",
        [
            ("where is my stuff", "order_status"),
            ("has it shipped", "order_status"),
            ("give me my money back", "refund"),
            ("I want a refund", "refund"),
            ("what are your hours", "opening_hours"),
            ("are you open tomorrow", "opening_hours"),
            ("change my address please", "change_address"),
            ("I gave the wrong address", "change_address"),
        ],
    )
    trained = run_cli_in(data_dir, "intents", "train", str(train_csv), timeout=120)
    model = data_dir / "intents" / "model.joblib"
    assert model.is_file()
    assert "24 examples, 4 labels" in trained.stdout and "minilm" in trained.stdout

    scored = run_cli_in(data_dir, "intents", "eval", str(held_out), timeout=120).stdout
    accuracy = float(re.search(r"accuracy\s+([\d.]+)%", scored).group(1))  # type: ignore[union-attr]
    assert accuracy >= 75.0, scored
    assert re.search(r"macro-F1\s+[\d.]+%", scored)
    assert re.search(r"ms/utterance\s+p50 [\d.]+\s+mean [\d.]+", scored)

    classifier = IntentClassifier.load(model)
    assert classifier.embedder_name == "minilm"


def test_cli_explicit_paths_and_missing_model(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "shop.csv", shop_rows())
    out = tmp_path / "elsewhere" / "m.joblib"
    run_cli_in(tmp_path / "data", "intents", "train", str(data), "--out", str(out), "--embedder", "none")
    assert out.is_file()
    scored = run_cli_in(tmp_path / "data", "intents", "eval", str(data), "--model", str(out)).stdout
    assert "accuracy      100.00%" in scored

    missing = run_cli_in(tmp_path / "data", "intents", "eval", str(data), check=False)
    assert missing.returncode == 1 and "no intent model at" in missing.stderr


BAD_CSVS = {
    "empty": ("", "the file is empty"),
    "header only": ("text,label\n", "no examples"),
    "no label column": ("text,answer\nhello,x\n", ":1: no 'label' column"),
    "no text column": ("utterance,label\nhello,x\n", ":1: no 'text' column"),
    "one example": ("text,label\na,x\nb,x\nc,y\nd,z\ne,z\n", ":4: label 'y' has only this one example"),
    "empty label": ("text,label\na,x\nb,\n", ":3: empty label"),
    "empty text": ("text,label\na,x\n ,y\n", ":3: empty text"),
    "short row": ("text,label\na,x\nb\n", ":3: expected at least 2 columns"),
    "one label": ("text,label\na,x\nb,x\n", "only one label"),
    "unquoted comma": (
        "text,label\na,x\nI moved, change my address,y\n",
        ":3: 3 columns but the header has 2",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_bad_csv_names_the_problem(tmp_path: Path, case: str) -> None:
    content, message = BAD_CSVS[case]
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(IntentDataError, match=re.escape(message)):
        read_examples(path)


def test_bad_csv_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nwhere is my order,order_status\nrefund please,refund\nmy refund,refund\n")
    result = run_cli_in(tmp_path / "data", "intents", "train", str(path), check=False)
    assert result.returncode == 1
    assert f"error: {path}:2: label 'order_status' has only this one example" in result.stderr
    assert not (tmp_path / "data" / "intents" / "model.joblib").exists()

    missing = run_cli_in(tmp_path / "data", "intents", "train", str(tmp_path / "nope.csv"), check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_two_label_model(tmp_path: Path) -> None:
    rows = [(text, label) for text, label in shop_rows() if label in ("refund", "opening_hours")]
    train(write_csv(tmp_path / "two.csv", rows), tmp_path / "two.joblib")
    classifier = IntentClassifier.load(tmp_path / "two.joblib", threshold=0.0)
    assert classifier.classify("when do you open on sunday").name == "opening_hours"
    assert classifier.classify("I want my money back now").name == "refund"
