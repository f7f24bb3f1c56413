"""The streaming interface every LLM backend speaks, its error, and the `none` backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable


class LLMError(RuntimeError):
    """The backend is unreachable, answered with an error, or its stream broke or was cut short."""


@runtime_checkable
class LLMBackend(Protocol):
    """A text-completion backend that streams its answer piece by piece.

    `stream` is an async generator: iterate it with `async for`. Cancelling the consuming task, or
    closing the generator (`contextlib.aclosing`), stops the generation promptly. Errors surface as
    LLMError, never as a transport exception.
    """

    name: str

    def stream(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = ()) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


class NoneBackend:
    """Retrieval only: every generation fails at once, so the policy falls back without waiting."""

    name = "none"

    async def stream(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = ()) -> AsyncIterator[str]:
        raise LLMError("no LLM configured")
        yield ""  # pragma: no cover - makes this an async generator like the other backends

    async def aclose(self) -> None:
        return None
