"""llama.cpp in-process: the bundled Gemma GGUF (or any GGUF), optionally with a LoRA GGUF adapter.

The model is loaded once. Generation runs in one worker thread per model (a llama.cpp context is
not re-entrant: one generation at a time, under a lock), and the tokens are handed to the event
loop as they come. Cancelling the consumer sets a flag the worker checks at every token, so the
worker stops within one token and the model is free for the next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llm.base import LLMError

log = logging.getLogger(__name__)

DEFAULT_N_CTX = 2048

_Emit = Callable[[str, str], None]


class LocalBackend:
    name = "local"

    def __init__(
        self,
        model_path: Path | str,
        *,
        lora_path: Path | str | None = None,
        threads: int = 0,
        n_ctx: int = DEFAULT_N_CTX,
        temperature: float = 0.0,
    ) -> None:
        from llama_cpp import Llama  # heavy import, only when the local backend is used

        kwargs: dict[str, Any] = {"model_path": str(model_path), "n_ctx": n_ctx, "verbose": False}
        if threads > 0:
            kwargs.update(n_threads=threads, n_threads_batch=threads)
        if lora_path:
            kwargs["lora_path"] = str(lora_path)
        try:
            self._llm: Any = Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LLMError(f"cannot load {model_path} (lora {lora_path or 'none'}): {exc}") from exc
        self.model_path = Path(model_path)
        self.temperature = temperature
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-local")
        self._idle = threading.Event()
        self._idle.set()
        self.last_token_count = 0  # tokens the latest generation produced (shows where a cancel took hold)

    async def stream(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = ()) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(kind: str, value: str) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is gone: nobody is listening any more
                cancelled.set()

        args = (prompt, max_tokens, list(stop), cancelled, emit)
        try:
            loop.run_in_executor(self._executor, self._generate, *args)
        except RuntimeError as exc:  # executor shut down by aclose()
            raise LLMError("local LLM backend is closed") from exc
        try:
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise LLMError(value)
                else:
                    return
        finally:
            cancelled.set()  # consumer cancelled, closed, or done: the worker stops at the next token

    def wait_idle(self, timeout: float) -> bool:
        """True once no generation runs (tests and benchmarks use it to see cancellation take hold)."""
        return self._idle.wait(timeout)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._close_model)

    def _close_model(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    def _generate(
        self, prompt: str, max_tokens: int, stop: list[str], cancelled: threading.Event, emit: _Emit
    ) -> None:
        if cancelled.is_set():
            emit("end", "")
            return
        with self._lock:
            self._idle.clear()
            try:
                self._run(prompt, max_tokens, stop, cancelled, emit)
            except Exception as exc:  # any llama.cpp failure is the caller's LLMError, never a dead thread
                log.warning("local LLM generation failed: %s", exc)
                emit("error", f"local LLM: {type(exc).__name__}: {exc}")
                return
            finally:
                self._idle.set()
        emit("end", "")

    def _run(
        self, prompt: str, max_tokens: int, stop: list[str], cancelled: threading.Event, emit: _Emit
    ) -> None:
        if self._llm is None:
            raise LLMError("model closed")
        chunks = self._llm.create_completion(
            prompt, max_tokens=max_tokens, stop=stop or None, temperature=self.temperature, stream=True
        )
        self.last_token_count = 0
        with contextlib.closing(chunks):
            for chunk in chunks:
                self.last_token_count += 1
                if cancelled.is_set():
                    return
                text = chunk["choices"][0]["text"]
                if text:
                    emit("text", text)
