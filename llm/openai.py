"""An OpenAI-compatible streaming completions client (vLLM in production, llama_cpp.server on CPU).

POST {base_url}/completions with stream=true and read the server-sent events. `base_url` includes
the /v1 prefix. Any failure (refused connection, HTTP error status, a malformed event, a stream that
ends without its [DONE] marker because the server died) raises LLMError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from llm.base import LLMError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 30.0
BODY_SNIPPET_CHARS = 300


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "",
        api_key: str = "",
        temperature: float = 0.0,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.temperature = temperature
        self._model_resolved = bool(model)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def stream(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = ()) -> AsyncIterator[str]:
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "stream": True,
        }
        if stop:
            body["stop"] = list(stop)
        model = await self._resolve_model()
        if model:
            body["model"] = model
        try:
            async with self._client.stream("POST", f"{self.base_url}/completions", json=body) as response:
                await _raise_for_status(response)
                async for piece in _completion_pieces(response):
                    yield piece
        except httpx.HTTPError as exc:
            raise LLMError(f"LLM server {self.base_url}: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _resolve_model(self) -> str:
        """The configured model, else the first one the server lists (once), else none."""
        if self._model_resolved:
            return self.model
        try:
            response = await self._client.get(f"{self.base_url}/models")
        except httpx.HTTPError as exc:
            raise LLMError(f"LLM server {self.base_url}: {type(exc).__name__}: {exc}") from exc
        try:
            models = response.json().get("data") or [] if response.status_code == 200 else []
            self.model = str(models[0]["id"]) if models else ""
        except (ValueError, KeyError, TypeError, AttributeError):
            self.model = ""
        self._model_resolved = True
        log.info("LLM server %s: using model %r", self.base_url, self.model or "(server default)")
        return self.model


async def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    body = (await response.aread()).decode("utf-8", "replace")
    snippet = " ".join(body.split())[:BODY_SNIPPET_CHARS]
    raise LLMError(f"LLM server answered HTTP {response.status_code}: {snippet}")


async def _completion_pieces(response: httpx.Response) -> AsyncIterator[str]:
    """The text of each completion event, until [DONE]; LLMError when the stream breaks off."""
    async for data in sse_events(response.aiter_lines()):
        if data == "[DONE]":
            return
        piece = parse_chunk(data)
        if piece:
            yield piece
    raise LLMError("LLM stream ended without [DONE] (server gone mid-answer?)")


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent event (multi-line data joined by newlines)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


def parse_chunk(data: str) -> str:
    """The text of one completions chunk; LLMError for anything else (errors, garbage)."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise LLMError(f"malformed LLM stream chunk: {data[:BODY_SNIPPET_CHARS]!r}") from exc
    if not isinstance(chunk, dict):
        raise LLMError(f"malformed LLM stream chunk: {data[:BODY_SNIPPET_CHARS]!r}")
    if "error" in chunk:
        raise LLMError(f"LLM server error mid-stream: {str(chunk['error'])[:BODY_SNIPPET_CHARS]}")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise LLMError(f"malformed LLM stream chunk (no choices): {data[:BODY_SNIPPET_CHARS]!r}")
    if not choices:
        return ""  # e.g. a final usage-only chunk
    text = choices[0].get("text") if isinstance(choices[0], dict) else None
    if text is None:
        raise LLMError(f"malformed LLM stream chunk (no text): {data[:BODY_SNIPPET_CHARS]!r}")
    return str(text)
