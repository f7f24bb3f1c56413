"""The knowledge-base API (/api/kb) and `voicebot kb` going through a running server.

milvus-lite lets one process open the knowledge base, so beside `voicebot serve` the CLI sends its
commands to the server's API. The e2e tests here use the shared `server` fixture (tests/conftest.py)
and the real CLI as a subprocess; they ingest their own gift-wrapping FAQ and remove it again, so the
demo entries other tests expect stay as they are. The access, readiness and body-limit rules are
also checked in process, without the server.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from testkit.net import free_port
from testkit.server import REPO_ROOT, ServerProcess, server_env
from voicebot.cli.api_client import multipart, server_url
from voicebot.config import Settings
from voicebot.kb.models import IngestReport
from voicebot.kb.store import KnowledgeBase
from voicebot.storage.keys import ApiKeys
from voicebot.storage.records import Records
from voicebot.web.api import MAX_UPLOAD_BYTES, MAX_UPLOAD_FILES, _CacheWarmer, _source
from voicebot.web.api import router as api_router

CLI_TIMEOUT_S = 120.0
HTTP_TIMEOUT_S = 60.0
THROUGH_SERVER = "holds the knowledge base: going through its API"

GIFT_FAQ = """\
question,answer,category
Do you offer gift wrapping?,"Yes, tick gift wrap at checkout; it costs three dollars per item.",gifts
Can I add a gift message?,"Yes, type up to 200 characters in the gift message box at checkout.",gifts
Is there a gift receipt?,,gifts
Can gifts ship to another address?,"Yes, enter the recipient's address as the delivery address.",gifts
"""
GIFT_QUESTIONS = (
    "Do you offer gift wrapping?",
    "Can I add a gift message?",
    "Can gifts ship to another address?",
)


def kb_cli(
    server: ServerProcess, *args: str, data_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python run.py kb ARGS...` with the server's port, and its data dir unless another is given."""
    return subprocess.run(
        [sys.executable, "run.py", "kb", *args],
        cwd=REPO_ROOT,
        env=server_env(data_dir or server.data_dir, server.port),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.http_client(HTTP_TIMEOUT_S) as client:
        yield client


def entry_count(api: httpx.Client) -> int:
    response = api.get("/api/kb")
    assert response.status_code == 200, response.text
    return int(response.json()["entries"])


def entries(api: httpx.Client) -> list[dict[str, Any]]:
    response = api.get("/api/kb/entries")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["entries"])
    return list(body["entries"])


def ingest(api: httpx.Client, *files: tuple[str, bytes], sources: list[str] | None = None) -> httpx.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return api.post("/api/kb/ingest", files=parts, data={"source": sources} if sources else None)


def ingest_chunked(api: httpx.Client | TestClient, content: Iterable[bytes]) -> httpx.Response:
    """An upload sent without a Content-Length (chunked), so the server can only count as it reads."""
    return api.post(
        "/api/kb/ingest",
        content=iter(content),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )


def oversized_upload() -> Iterator[bytes]:
    """A well-formed start of an upload whose file goes on past MAX_UPLOAD_BYTES."""
    yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="huge.csv"\r\n\r\nquestion,answer\n'
    for _ in range(MAX_UPLOAD_BYTES // 2**20 + 1):
        yield b"y" * 2**20


@pytest.fixture(scope="module")
def gift_faq(tmp_path_factory: pytest.TempPathFactory, api: httpx.Client) -> Iterator[Path]:
    """A FAQ of our own with one bad row (line 4); its entries are removed from the shared server after."""
    path = tmp_path_factory.mktemp("kb-api") / "gift-wrapping.csv"
    path.write_text(GIFT_FAQ, encoding="utf-8")
    yield path
    # A file with no rows replaces the file's entries with none.
    response = ingest(api, (path.name, b"question,answer\n"), sources=[str(path.resolve())])
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def first_ingest(
    server: ServerProcess, api: httpx.Client, gift_faq: Path
) -> tuple[subprocess.CompletedProcess[str], int]:
    """`voicebot kb ingest gift-wrapping.csv missing.csv` beside the running server, and the count before."""
    before = entry_count(api)
    return kb_cli(server, "ingest", str(gift_faq), str(gift_faq.with_name("missing.csv"))), before


# ---------------------------------------------------------------- the CLI through the server


@pytest.mark.e2e
def test_cli_ingest_goes_through_the_server_and_reports_bad_rows(
    api: httpx.Client, gift_faq: Path, first_ingest: tuple[subprocess.CompletedProcess[str], int]
) -> None:
    result, before = first_ingest
    assert result.returncode == 1, explain(result)  # one bad row
    assert result.stderr.count(THROUGH_SERVER) == 1, explain(result)
    assert "gift-wrapping.csv:4: missing answer" in result.stderr, explain(result)
    assert "missing.csv: no such file" in result.stderr, explain(result)
    assert "2 problem(s); the other rows were stored" in result.stderr
    assert "Traceback" not in result.stderr, explain(result)
    assert result.stdout.splitlines() == [
        f"{gift_faq}: 3 entries",
        f"{before + 3} entries in the knowledge base",
    ]
    # Stored under the path a direct `kb ingest` would use, with the file's own line numbers.
    ours = [entry for entry in entries(api) if entry["source"] == str(gift_faq.resolve())]
    assert [(e["line"], e["question"]) for e in ours] == list(zip((2, 3, 5), GIFT_QUESTIONS, strict=True))
    assert ours[0]["metadata"] == {"category": "gifts"}


@pytest.mark.e2e
def test_cli_reingest_through_the_server_replaces_without_duplicates(
    server: ServerProcess,
    api: httpx.Client,
    gift_faq: Path,
    first_ingest: tuple[subprocess.CompletedProcess[str], int],
) -> None:
    _, before = first_ingest
    again = kb_cli(server, "ingest", str(gift_faq))
    assert again.returncode == 1, explain(again)
    assert f"{before + 3} entries in the knowledge base" in again.stdout, explain(again)

    listing = kb_cli(server, "list")
    assert listing.returncode == 0, explain(listing)
    assert listing.stderr.count(THROUGH_SERVER) == 1, explain(listing)
    lines = listing.stdout.splitlines()
    assert lines[-1] == f"{before + 3} entries"
    for line, question in zip((2, 3, 5), GIFT_QUESTIONS, strict=True):
        assert sum(f"gift-wrapping.csv:{line}  {question}  | " in row for row in lines) == 1, listing.stdout
    # The demo is still there for the other tests.
    assert any("voicebot/demo/faq.csv:2  How do I track my order?" in row for row in lines)


@pytest.mark.e2e
def test_cli_search_through_the_server(
    server: ServerProcess, first_ingest: tuple[subprocess.CompletedProcess[str], int]
) -> None:
    search = kb_cli(server, "search", "can you wrap my present for me", "-k", "2")
    assert search.returncode == 0, explain(search)
    assert search.stderr.count(THROUGH_SERVER) == 1, explain(search)
    lines = search.stdout.splitlines()
    assert len(lines) == 4, search.stdout
    assert lines[0].startswith("1. 0.") and lines[0].endswith("Do you offer gift wrapping?"), search.stdout
    answer, _, scores = lines[1].strip().partition("  [")
    assert answer == "Yes, tick gift wrap at checkout; it costs three dollars per item.", search.stdout
    assert re.fullmatch(r"vector 0\.\d+, lexical [01]\.\d+\]", scores), search.stdout
    assert lines[2].startswith("2. ")


@pytest.mark.e2e
def test_cli_does_not_use_a_server_holding_another_knowledge_base(
    server: ServerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    holder = KnowledgeBase(str(data / "kb.db"), "kb", FakeEmbedder())
    try:
        result = kb_cli(server, "list", data_dir=data)
    finally:
        holder.close()
    assert result.returncode == 1, explain(result)
    assert "another process holds it" in result.stderr
    # Its temporary API key lives in the other data dir's database: the server does not know it.
    assert "refused this command's API key: it uses another database" in result.stderr
    assert THROUGH_SERVER not in result.stderr


def test_cli_without_a_server_keeps_the_lock_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()  # nothing listens there
    holder = KnowledgeBase(str(data / "kb.db"), "kb", FakeEmbedder())
    try:
        result = subprocess.run(
            [sys.executable, "run.py", "kb", "ingest", str(tmp_path / "faq.csv")],
            cwd=REPO_ROOT,
            env=server_env(data, port),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    finally:
        holder.close()
    assert result.returncode == 1, explain(result)
    assert result.stderr.splitlines() == [
        f"error: cannot open the knowledge base at {data.resolve() / 'kb.db'}: another process holds it "
        "(milvus-lite allows one process per .db; stop the server, or point VOICEBOT_MILVUS_URI at a "
        "Milvus server)",
        f"no voicebot server answers at http://127.0.0.1:{port} to go through instead",
    ]


# ---------------------------------------------------------------- the API directly


@pytest.mark.e2e
def test_an_oversized_upload_is_refused_with_413(api: httpx.Client) -> None:
    before = entry_count(api)
    big = b"question,answer\n" + b"x" * MAX_UPLOAD_BYTES
    response = ingest(api, ("huge.csv", big))
    assert response.status_code == 413, response.text
    assert "too large" in response.json()["detail"] and "10 MiB" in response.json()["detail"]

    response = ingest_chunked(api, oversized_upload())
    assert response.status_code == 413, response.text
    assert "too large" in response.json()["detail"]
    assert entry_count(api) == before


@pytest.mark.e2e
def test_unsupported_file_type_is_a_per_file_error(server: ServerProcess, api: httpx.Client) -> None:
    notes = "# Gift wrapping\n\nWe wrap gifts in recycled paper with a cotton ribbon.\n"
    uploaded = str(server.data_dir.resolve() / "uploads" / "gift-notes.md")
    before = entry_count(api)
    files = [
        ("broken.csv", b"hello\nworld\n"),
        ("price-list.pdf", b"%PDF-1.4"),
        ("gift-notes.md", notes.encode()),
    ]
    response = ingest(api, *files)
    try:
        assert response.status_code == 422, response.text  # not every file was stored
        body = response.json()
        assert body["errors"] == [  # in file order; the other files are stored all the same
            "broken.csv:1: header has no question or answer column (found: hello)",
            "price-list.pdf: unsupported file type '.pdf': use .csv, .md, .markdown or .txt",
        ]
        # No source given and a bare file name: stored as an upload of that name, and searchable.
        assert body["added"] == {uploaded: 1}
        assert body["entries"] == before + 1
        hits = api.get("/api/kb/search", params={"q": "what paper do you wrap gifts in", "k": 1}).json()
        assert hits["hits"][0]["source"] == uploaded
        assert hits["hits"][0]["question"] == "Gift wrapping"
        assert 0 < hits["threshold"] < 1
    finally:
        cleanup = ingest(api, ("gift-notes.md", b""))  # no paragraphs: replaces its entries with none
        assert cleanup.status_code == 200 and cleanup.json()["added"] == {uploaded: 0}, cleanup.text
    assert entry_count(api) == before


# ---------------------------------------------------------------- in process: access, readiness, parsing


class FakeEmbedder:
    """Enough of an embedder to hold a knowledge base open (MiniLM's dimension, no model)."""

    dim = 384

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        vectors[:, 0] = 1.0
        return vectors


_KEY_DB = Path(tempfile.mkdtemp(prefix="voicebot-keys-")) / "keys.db"
_KEYS = ApiKeys(Records(f"sqlite:///{_KEY_DB}"))
KEY = _KEYS.create("kb api tests")[1]
AUTH = {"Authorization": f"Bearer {KEY}"}


def app_with(resources: Any = None, error: str | None = None) -> FastAPI:
    """The API router alone, with a real API key store (SQLite) and the given resources."""
    app = FastAPI()
    app.include_router(api_router)
    app.state.voicebot = SimpleNamespace(resources=resources, error=error, keys=_KEYS)
    return app


LOCAL = ("127.0.0.1", 50000)


@pytest.mark.parametrize(
    ("client", "headers"),
    [
        (("127.0.0.1", 50000), {}),  # loopback is not a credential
        (("127.0.0.1", 50000), {"X-Forwarded-For": "127.0.0.1"}),
        (("::1", 50000), {"Authorization": "Bearer vb_00000000_" + "x" * 43}),
        (("203.0.113.7", 40000), {"Authorization": "Basic !!!"}),
    ],
)
def test_requests_without_a_valid_key_get_401(client: tuple[str, int], headers: dict[str, str]) -> None:
    with TestClient(app_with(), client=client, headers=headers) as http:
        for response in (
            http.get("/api/kb/entries"),
            http.get("/api/kb/search", params={"q": "x"}),
            http.post("/api/kb/ingest", files={"files": ("faq.csv", b"question,answer\n")}),
            ingest_chunked(http, oversized_upload()),  # refused before its body is read
        ):
            assert response.status_code == 401
            assert "needs an API key" in response.json()["detail"]


def test_503_while_the_server_starts_or_after_it_failed() -> None:
    with TestClient(app_with(), client=LOCAL, headers=AUTH) as http:
        for path in ("/api/kb", "/api/kb/entries", "/api/kb/search?q=x"):
            response = http.get(path)
            assert response.status_code == 503
            assert "still starting" in response.json()["detail"]
        response = http.post("/api/kb/ingest", files={"files": ("faq.csv", b"question,answer\n")})
        assert response.status_code == 503
        assert ingest_chunked(http, oversized_upload()).status_code == 503  # before its body is read
    with TestClient(app_with(error="RuntimeError: no model"), client=("::1", 50000), headers=AUTH) as http:
        response = http.get("/api/kb/entries")
        assert response.status_code == 503
        assert "failed to start (RuntimeError: no model)" in response.json()["detail"]


def test_ingest_limits_and_malformed_bodies(tmp_path: Path) -> None:
    ready = SimpleNamespace(settings=Settings(data_dir=tmp_path), kb=None)  # refused before the kb is used
    with TestClient(app_with(ready), client=LOCAL, headers=AUTH) as http:
        declared = http.post(
            "/api/kb/ingest",
            content=b"x" * (MAX_UPLOAD_BYTES + 1),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert declared.status_code == 413
        assert "too large (10.0 MiB): at most 10 MiB" in declared.json()["detail"]
        streamed = ingest_chunked(http, oversized_upload())
        assert streamed.status_code == 413 and "too large: at most 10 MiB" in streamed.json()["detail"]
        not_multipart = http.post("/api/kb/ingest", json={"files": ["faq.csv"]})
        assert not_multipart.status_code == 400 and "multipart/form-data" in not_multipart.json()["detail"]
        garbled = ingest_chunked(http, [b"x" * 1024])
        assert garbled.status_code == 400
        too_many = http.post(
            "/api/kb/ingest",
            files=[("files", (f"{n}.csv", b"question,answer\n")) for n in range(MAX_UPLOAD_FILES + 1)],
        )
        assert too_many.status_code == 400 and "files" in too_many.json()["detail"]
        not_a_file = http.post("/api/kb/ingest", files={"files": (None, b"faq.csv")})
        assert not_a_file.status_code == 400 and "'files'" in not_a_file.json()["detail"]
        no_files = http.post("/api/kb/ingest", data={"source": "/srv/faq.csv"}, files={"other": ("a", b"")})
        assert no_files.status_code == 400 and "'files'" in no_files.json()["detail"]
        sources = http.post(
            "/api/kb/ingest",
            data={"source": ["/a.csv", "/b.csv"]},
            files={"files": ("a.csv", b"question,answer\n")},
        )
        assert sources.status_code == 400 and "one per file" in sources.json()["detail"]


def test_source_names(tmp_path: Path) -> None:
    # The CLI's absolute path, given as a field or as the file name, is the source as it is.
    assert _source("faq.csv", "/srv/kb/faq.csv", tmp_path) == "/srv/kb/faq.csv"
    assert _source("/srv/kb/./docs/../faq.csv", None, tmp_path) == "/srv/kb/faq.csv"
    # A bare name (a browser upload) stands for the upload of that name.
    assert _source("faq.csv", None, tmp_path) == str(tmp_path.resolve() / "uploads" / "faq.csv")
    assert _source("C:\\Users\\me\\faq.csv", None, tmp_path) == str(
        tmp_path.resolve() / "uploads" / "faq.csv"
    )
    with pytest.raises(ValueError, match="not an absolute path"):
        _source("faq.csv", "kb/faq.csv", tmp_path)
    with pytest.raises(ValueError, match="no file name"):
        _source("", None, tmp_path)


class RecordingKB:
    """Enough of a knowledge base for an ingest: keeps what each file held, stores one entry a file."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    def ingest_as(self, files: list[tuple[Path, str]]) -> IngestReport:
        ((path, source),) = files
        self.received.append((source, path.read_bytes()))
        return IngestReport(added={source: 1})

    def count(self) -> int:
        return len(self.received)


def test_cli_upload_round_trips_through_the_endpoint(tmp_path: Path) -> None:
    data = bytes(range(256)) * 3 + b"\r\n--not-a-boundary\r\n" + "question,answer\né,ü\n".encode()
    data += b"z" * 2 * 2**20  # past what the form parser keeps in memory
    source = '/srv/kb/gift wrap "2" é.csv'
    # Quotes in the file name are percent-encoded, as browsers do; the source field is sent as it is.
    body, content_type = multipart({"source": source}, "files", 'gift "2".csv', data)
    kb = RecordingKB()
    app = app_with(SimpleNamespace(settings=Settings(data_dir=tmp_path), kb=kb))
    warmed = threading.Event()

    async def warm(res: Any) -> int:
        warmed.set()
        return 1

    app.state.kb_cache_warmer = _CacheWarmer(warm)
    with TestClient(app, client=LOCAL, headers=AUTH) as http:
        response = http.post("/api/kb/ingest", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        assert response.json() == {"added": {source: 1}, "errors": [], "entries": 1, "kept": {}}
        assert kb.received == [(source, data)]
        assert warmed.wait(10), "no phrase cache warm-up after an ingest that stored entries"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8099"),
        ("0.0.0.0", "http://127.0.0.1:8099"),
        ("::", "http://127.0.0.1:8099"),
        ("::1", "http://[::1]:8099"),
        ("bot.internal", "http://bot.internal:8099"),
    ],
)
def test_cli_reaches_the_server_on_loopback(host: str, url: str) -> None:
    assert server_url(Settings(http_host=host, http_port=8099)) == url
