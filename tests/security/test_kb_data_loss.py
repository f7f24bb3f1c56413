"""Finding #5: the knowledge base could lose data, and hand raw control characters to terminals.

Re-uploading a file that failed to parse (every row bad, an unreadable CSV) deleted that file's
entries (3 -> 0) and the API answered 200; a NUL byte in an entry was stored, and from then on every
ingest's phrase-cache warm-up failed with "embedded null character"; formula cells (`=cmd|...`) and
ANSI escapes were stored and printed raw by `kb list`.

Now a file replaces its entries only when it parsed and stored completely (the API answers 422 and
keeps the old ones otherwise), control characters are refused by line, the CLI escapes what it prints
from stored data, and `kb export` writes formulas as text. Checked through the real CLI (offline, and
through a running server) and the real HTTP API of the shared `server` fixture.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.cli import run_cli_in
from testkit.server import ServerProcess
from voicebot.kb.embedding import embed_records
from voicebot.kb.models import Record
from voicebot.kb.store import KnowledgeBase
from voicebot.nlu.embeddings import load_embedder

HTTP_TIMEOUT_S = 120.0
CLI_TIMEOUT_S = 120.0
# The start-up warm-up synthesizes the whole demo FAQ, which takes a while on a busy machine.
WARM_UP_WITHIN_S = 240.0
# What the warm-ups log when they are done: the one at start-up, and the one after an ingest.
WARMED_AT_START = re.compile(r"phrase cache: synthesized \d+ answers")
WARMED_AFTER_INGEST = re.compile(r"phrase cache: synthesized \d+ new answers")
WARM_UP_FAILED = "phrase cache warm-up after ingest failed"

FORMULA = "=cmd|' /C calc'!A0"
FAQ = f"""\
question,answer,category
Do you sell gift wrap?,Yes. Choose gift wrap at checkout.,orders
Do you have a loyalty program?,Yes. Every order earns points.,account
How do I open the price list?,"{FORMULA}",@SUM(1+1)
"""
ANSWERS = [
    "Yes. Choose gift wrap at checkout.",
    "Yes. Every order earns points.",
    FORMULA,
]
# A broken version of the same file: one row with a NUL byte, one without an answer.
BROKEN = (
    "question,answer,category\n"
    "Do you sell gift wrap?,No longer.,orders\n"
    "Do you have a loyalty program?,Yes\x00 but not today.,account\n"
    "How do I open the price list?,,orders\n"
)
BROKEN_ERRORS = [
    "faq.csv:3: control character U+0000 in answer",
    "faq.csv:4: missing answer",
    "faq.csv: not replaced: 2 bad rows; the 3 entries stored before are kept",
]


def explain(result: Any) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def exported(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# ---------------------------------------------------------------- the CLI, offline


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A data dir of our own, without the demo entries (the CLI's environment copies ours)."""
    monkeypatch.setenv("VOICEBOT_KB_DEMO", "false")
    return tmp_path / "data"


def kb(data_dir: Path, *args: str, port: int | None = None) -> Any:
    return run_cli_in(data_dir, "kb", *args, timeout=CLI_TIMEOUT_S, check=False, port=port)


def test_cli_reingest_of_a_broken_file_keeps_its_entries(offline: Path, tmp_path: Path) -> None:
    faq = tmp_path / "faq.csv"
    faq.write_text(FAQ, encoding="utf-8")
    first = kb(offline, "ingest", str(faq))
    assert first.returncode == 0, explain(first)
    assert "3 entries in the knowledge base" in first.stdout, explain(first)

    faq.write_text(BROKEN, encoding="utf-8")
    again = kb(offline, "ingest", str(faq))
    assert again.returncode == 1, explain(again)
    assert again.stderr.splitlines() == [
        *BROKEN_ERRORS,
        "3 problem(s); 1 file was not replaced (the entries stored before are kept); nothing was stored",
    ], explain(again)
    assert again.stdout.splitlines() == ["3 entries in the knowledge base"], explain(again)

    listing = kb(offline, "list")
    assert listing.returncode == 0, explain(listing)
    lines = listing.stdout.splitlines()
    assert lines[-1] == "3 entries", listing.stdout
    assert "faq.csv:2  Do you sell gift wrap?  | Yes. Choose gift wrap at checkout." in listing.stdout
    assert "No longer" not in listing.stdout and "\\x00" not in listing.stdout

    # The export writes the formula as text, in a file and on stdout alike.
    out = tmp_path / "export.csv"
    to_file = kb(offline, "export", str(out))
    assert to_file.returncode == 0, explain(to_file)
    assert to_file.stdout.strip() == f"3 entries written to {out}"
    to_stdout = kb(offline, "export", "-")
    assert to_stdout.returncode == 0, explain(to_stdout)
    for text in (out.read_text(encoding="utf-8"), to_stdout.stdout):
        rows = exported(text)
        assert list(rows[0]) == ["question", "answer", "source", "line", "category"]
        assert [row["answer"] for row in rows] == [*ANSWERS[:2], f"'{FORMULA}"]
        assert [row["category"] for row in rows] == ["orders", "account", "'@SUM(1+1)"]
        assert {row["source"] for row in rows} == {str(faq.resolve())}
        assert [row["line"] for row in rows] == ["2", "3", "4"]
        assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())


def test_cli_output_escapes_control_characters_in_stored_data(offline: Path, tmp_path: Path) -> None:
    # A file name may hold an ESC: such a file is refused, and the error naming it printed escaped.
    named = tmp_path / "prices\x1b[2J.csv"
    named.write_text("question,answer\nDo you price match?,Yes. Show us the lower price.\n")
    ingest = kb(offline, "ingest", str(named))
    assert ingest.returncode == 1, explain(ingest)
    assert "\x1b" not in ingest.stderr, explain(ingest)
    assert "prices\\x1b[2J.csv: control character U+001B in the path: rename the file" in ingest.stderr

    # An entry's text could hold one when a version from before ingest refused control characters
    # stored it: stored here as that version did.
    embedder = load_embedder()
    store = KnowledgeBase(str(offline / "kb.db"), "kb", embedder)
    try:
        legacy = Record("\x1b[2J\x1b[31mWhat colour is the logo?", "Red.\x1b]0;owned\x07\x00 Really.", 7)
        vector = embed_records(embedder, [legacy], store.embed_mode)[0]
        store._client.insert(
            store.collection,
            [
                {
                    "vector": vector.tolist(),
                    "question": legacy.question,
                    "answer": legacy.answer,
                    "text": f"{legacy.question}\n{legacy.answer}",
                    "source": str(tmp_path / "legacy.csv"),
                    "line": legacy.line,
                    "metadata": {},
                }
            ],
        )
    finally:
        store.close()

    listing = kb(offline, "list")
    search = kb(offline, "search", "what colour is your logo", "-k", "2")
    for result in (listing, search):
        assert result.returncode == 0, explain(result)
        raw = [
            char for char in result.stdout if char != "\n" and (ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F)
        ]
        assert raw == [], explain(result)
        assert "\\x1b[2J\\x1b[31mWhat colour is the logo?" in result.stdout, explain(result)
        assert "Red.\\x1b]0;owned\\x07\\x00 Really." in result.stdout, explain(result)


# ---------------------------------------------------------------- through a running server


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.http_client(HTTP_TIMEOUT_S) as client:
        yield client


def upload(api: httpx.Client, data: str | bytes, source: str) -> httpx.Response:
    content = data.encode() if isinstance(data, str) else data
    files = [("files", (Path(source).name, content, "text/csv"))]
    return api.post("/api/kb/ingest", files=files, data={"source": [source]})


def stored(api: httpx.Client, source: str) -> list[dict[str, Any]]:
    response = api.get("/api/kb/entries")
    assert response.status_code == 200, response.text
    return [entry for entry in response.json()["entries"] if entry["source"] == source]


@pytest.fixture
def source(api: httpx.Client, tmp_path: Path) -> Iterator[str]:
    """A source of our own on the shared server, emptied after the test (the demo entries stay)."""
    name = str(tmp_path.resolve() / "faq.csv")
    yield name
    cleanup = upload(api, "question,answer\n", name)
    assert cleanup.status_code == 200 and cleanup.json()["added"] == {name: 0}, cleanup.text


@pytest.mark.e2e
def test_a_broken_reupload_is_422_and_keeps_the_entries(api: httpx.Client, source: str) -> None:
    first = upload(api, FAQ, source)
    assert first.status_code == 200, first.text
    assert first.json()["added"] == {source: 3} and first.json()["errors"] == []
    assert first.json()["kept"] == {}
    before = stored(api, source)
    assert [entry["answer"] for entry in before] == ANSWERS

    broken = {
        "bad rows": (BROKEN, BROKEN_ERRORS),
        "every row bad": (
            "question,answer\nNo answer?,\n,No question\n",
            [
                "faq.csv:2: missing answer",
                "faq.csv:3: missing question",
                "faq.csv: not replaced: 2 bad rows; the 3 entries stored before are kept",
            ],
        ),
        "unreadable CSV": (
            "question,answer\nA question?,An answer.\n" + "x" * 200_000 + ",y\n",
            [
                "faq.csv:3: unreadable CSV, rest of file skipped: field larger than field limit (131072)",
                "faq.csv: not replaced: 1 bad row; the 3 entries stored before are kept",
            ],
        ),
        "not text": (
            b"question,answer\nDo you ship?,Yes\xff\n",
            ["faq.csv: not UTF-8 text (invalid start byte at byte 32); the 3 entries stored before are kept"],
        ),
        "no header": (
            "hello\nworld\n",
            [
                "faq.csv:1: header has no question or answer column (found: hello); "
                "the 3 entries stored before are kept"
            ],
        ),
    }
    for name, (data, errors) in broken.items():
        response = upload(api, data, source)
        assert response.status_code == 422, f"{name}: {response.text}"
        body = response.json()
        assert body["errors"] == errors, name
        assert body["added"] == {} and body["kept"] == {source: 3}, name
        assert stored(api, source) == before, name
        assert body["entries"] == int(api.get("/api/kb").json()["entries"])


@pytest.mark.e2e
def test_a_nul_row_is_refused_and_the_phrase_cache_keeps_working(
    server: ServerProcess, api: httpx.Client, source: str
) -> None:
    # The start-up warm-up first: one running beside the ingest's may synthesize the same phrase into
    # the same cache file at the same time, a failure that has nothing to do with what is checked here.
    deadline = time.monotonic() + WARM_UP_WITHIN_S
    while not WARMED_AT_START.search(server.log_text()):
        assert time.monotonic() < deadline, f"no phrase cache warm-up at start\n{server.log_tail()}"
        time.sleep(0.5)
    logged_before = len(server.log_text())
    text = (
        "question,answer\n"
        "Do you repair kettles?,We repair kettles bought here within two years.\n"
        "Do you repair toasters?,We repair toasters\x00 too.\n"
        "Do you repair radios?,We repair radios made after nineteen ninety.\n"
    )
    # A first upload of the file: nothing to lose, so the good rows are stored and the NUL row named.
    response = upload(api, text, source)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"] == ["faq.csv:3: control character U+0000 in answer"]
    assert body["added"] == {source: 2} and body["kept"] == {}
    entries = stored(api, source)
    assert [entry["line"] for entry in entries] == [2, 4]
    assert not any("\x00" in entry["answer"] or "\x00" in entry["question"] for entry in entries)

    # The two new answers are synthesized into the phrase cache, which no stored NUL breaks any more.
    deadline = time.monotonic() + WARM_UP_WITHIN_S
    since = server.log_text()[logged_before:]
    while not WARMED_AFTER_INGEST.search(since) and WARM_UP_FAILED not in since:
        assert time.monotonic() < deadline, f"no phrase cache warm-up after the ingest\n{server.log_tail()}"
        time.sleep(0.5)
        since = server.log_text()[logged_before:]
    assert WARM_UP_FAILED not in since, server.log_tail()
    assert "embedded null character" not in server.log_text()


@pytest.mark.e2e
def test_cli_through_the_server_reports_a_refused_reupload_and_exports_safely(
    server: ServerProcess, api: httpx.Client, source: str, tmp_path: Path
) -> None:
    faq = Path(source)
    faq.write_text(FAQ, encoding="utf-8")
    first = kb(server.data_dir, "ingest", str(faq), port=server.port)
    assert first.returncode == 0, explain(first)
    assert "going through its API" in first.stderr, explain(first)

    faq.write_text(BROKEN, encoding="utf-8")
    again = kb(server.data_dir, "ingest", str(faq), port=server.port)
    assert again.returncode == 1, explain(again)
    lines = again.stderr.splitlines()
    assert lines[1:] == [
        *BROKEN_ERRORS,
        "3 problem(s); 1 file was not replaced (the entries stored before are kept); nothing was stored",
    ], explain(again)
    assert "Traceback" not in again.stderr
    assert [entry["answer"] for entry in stored(api, source)] == ANSWERS

    out = tmp_path / "export.csv"
    export = kb(server.data_dir, "export", str(out), port=server.port)
    assert export.returncode == 0, explain(export)
    ours = [row for row in exported(out.read_text(encoding="utf-8")) if row["source"] == source]
    assert [row["answer"] for row in ours] == [*ANSWERS[:2], f"'{FORMULA}"]
    assert [row["category"] for row in ours] == ["orders", "account", "'@SUM(1+1)"]
