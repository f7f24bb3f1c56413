"""The LLM backends against real peers: llama_cpp.server with the bundled Gemma GGUF, llama.cpp
in-process, and small raw-socket servers that misbehave on purpose (garbage events, cut streams)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from llm import LLMError, NoneBackend, build_prompt, bundled_gemma, make_backend
from llm.local import LocalBackend
from llm.openai import OpenAIBackend, parse_chunk, sse_events
from llm.prompts import STOP
from testkit.net import free_port

pytest.importorskip("llama_cpp")

SERVER_START_TIMEOUT_S = 90.0
PROMPT = build_prompt(
    "How long does delivery take?",
    ["Standard delivery takes three to five business days. Express delivery takes one to two days."],
    history=[],
    facts={"order_number": "45712"},
)
# No stop sequences and a long budget: the generation lasts long enough to be killed or cancelled.
LONG_PROMPT = "Here is a long story about a ship, a storm and a lighthouse keeper.\n\nOnce upon a time"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundled_gemma(tmp_path_factory.mktemp("models"))


def _start_server(gguf: Path, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(log_dir / f"llama-server-{port}.log", "wb")  # noqa: SIM115 - lives as long as the server
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {Path(log.name).read_text()[-2000:]}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"{base_url}/models", timeout=2) as response,
        ):
            if response.status == 200:
                return proc, base_url
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not answer /v1/models in time")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, base_url = _start_server(gguf, tmp_path_factory.mktemp("logs"))
    yield base_url
    _stop(proc)


@pytest.fixture(scope="module")
def local(gguf: Path) -> Iterator[LocalBackend]:
    backend = make_backend("local", model_path=gguf, threads=2)
    assert isinstance(backend, LocalBackend)
    yield backend
    asyncio.run(backend.aclose())


async def _collect(pieces: AsyncIterator[str]) -> str:
    return "".join([piece async for piece in pieces])


# --- openai -------------------------------------------------------------------------------------


async def test_openai_streams_a_grounded_answer(llama_server: str) -> None:
    backend = make_backend("openai", base_url=llama_server)
    try:
        pieces = [p async for p in backend.stream(PROMPT, max_tokens=40, stop=STOP)]
    finally:
        await backend.aclose()
    text = "".join(pieces)
    assert text.strip(), "no text streamed"
    assert len(pieces) > 1, "the answer came in one piece: not streamed"
    assert "\n" not in text  # the stop sequence ended the answer line
    assert isinstance(backend, OpenAIBackend) and backend.model  # resolved from /v1/models


async def test_openai_server_killed_mid_stream_raises_quickly(
    gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    proc, base_url = _start_server(gguf, tmp_path_factory.mktemp("logs"))
    backend = make_backend("openai", base_url=base_url)
    killed_at = 0.0
    try:
        with pytest.raises(LLMError):
            async for _piece in backend.stream(LONG_PROMPT, max_tokens=400):
                if not killed_at:
                    proc.kill()
                    killed_at = time.monotonic()
        assert killed_at, "no piece arrived before the kill"
        assert time.monotonic() - killed_at < 2.0
    finally:
        proc.kill()
        proc.wait()
        await backend.aclose()


async def test_openai_connection_refused_raises_within_a_second() -> None:
    backend = make_backend("openai", base_url=f"http://127.0.0.1:{free_port()}/v1")
    start = time.monotonic()
    with pytest.raises(LLMError, match="ConnectError"):
        await _collect(backend.stream("hi", max_tokens=5))
    assert time.monotonic() - start < 1.0
    await backend.aclose()


async def test_openai_http_error_status_carries_status_and_body(llama_server: str) -> None:
    backend = make_backend("openai", base_url=llama_server.removesuffix("/v1") + "/nope", model="m")
    with pytest.raises(LLMError, match="HTTP 404"):
        await _collect(backend.stream("hi", max_tokens=5))
    await backend.aclose()


async def _raw_server(body: bytes) -> tuple[asyncio.Server, str]:
    """An HTTP server that answers any request with an event stream `body`, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        writer.write(head + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'data: {"choices": [{"text": "Hello"}]}\n\ndata: {not json\n\n', "malformed"),
        (b'data: {"choices": [{"text": "Hello"}]}\n\n', "without \\[DONE\\]"),
        (b'data: {"error": {"message": "out of memory"}}\n\n', "out of memory"),
    ],
)
async def test_openai_broken_streams_raise(body: bytes, message: str) -> None:
    server, base_url = await _raw_server(body)
    backend = make_backend("openai", base_url=base_url, model="m")
    try:
        with pytest.raises(LLMError, match=message):
            await _collect(backend.stream("hi", max_tokens=5))
    finally:
        await backend.aclose()
        server.close()


async def test_sse_parsing_joins_multiline_data_and_skips_comments() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [": keep-alive", "event: message", "data: a", "data: b", "", "data: [DONE]", ""]:
            yield line

    assert [e async for e in sse_events(lines())] == ["a\nb", "[DONE]"]
    assert parse_chunk('{"choices": [{"text": " hi", "index": 0}]}') == " hi"
    assert parse_chunk('{"choices": []}') == ""
    with pytest.raises(LLMError):
        parse_chunk('{"choices": [{"index": 0}]}')


# --- local --------------------------------------------------------------------------------------


async def test_local_streams_a_grounded_answer(local: LocalBackend) -> None:
    pieces = [p async for p in local.stream(PROMPT, max_tokens=40, stop=STOP)]
    assert "".join(pieces).strip() and len(pieces) > 1


async def test_local_cancellation_stops_generation(local: LocalBackend) -> None:
    # What the model answers to PROMPT when nothing was cancelled (greedy decoding: deterministic).
    before = await _collect(local.stream(PROMPT, max_tokens=8, stop=STOP))
    assert before.strip(), "no answer to the short prompt before any cancellation"
    got: list[str] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for piece in local.stream(LONG_PROMPT, max_tokens=400):
            got.append(piece)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 20)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # The worker stops at the next token: a few tokens past what was consumed, not the 400 asked for.
    # (Time bound generous: this 2-core machine is shared, and one token can take a second under load.)
    assert await asyncio.to_thread(local.wait_idle, 10.0), "generation kept running after cancel"
    assert local.last_token_count <= len(got) + 3
    # The model is free again, and unharmed: the next turn gets the very answer it got before the
    # cancelled generation (not nothing, not the tail of the story, not an error).
    after = await asyncio.wait_for(_collect(local.stream(PROMPT, max_tokens=8, stop=STOP)), 60)
    assert after == before, f"after the cancellation: {after!r}, before it: {before!r}"


async def test_local_closing_the_iterator_early_stops_generation(local: LocalBackend) -> None:
    async with contextlib.aclosing(local.stream(LONG_PROMPT, max_tokens=400)) as pieces:
        async for _piece in pieces:
            break
    assert await asyncio.to_thread(local.wait_idle, 10.0)
    assert local.last_token_count <= 4


def test_local_bad_model_path_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(LLMError):
        make_backend("local", model_path=bad)


# --- none ---------------------------------------------------------------------------------------


async def test_none_raises_at_once() -> None:
    backend = make_backend("none")
    assert isinstance(backend, NoneBackend)
    with pytest.raises(LLMError, match="no LLM configured"):
        await _collect(backend.stream("hi", max_tokens=5))
    with pytest.raises(ValueError):
        make_backend("gpt")
