"""Alembic migrations on SQLite and PostgreSQL: new databases, the 0.1 runner's, later revisions.

Databases at each version of the 0.1 runner are made with a frozen copy of it (legacy_runner.py);
the database written by the 0.1 release itself is tested in test_release_upgrade.py.
"""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from cryptography.fernet import Fernet
from sqlalchemy import Boolean, Column, Engine, Integer, MetaData, String, Table, Text, inspect, select, text
from sqlalchemy.engine import make_url

from testkit.storage import legacy_runner
from testkit.storage.schema_snapshot import schema_snapshot
from voicebot.storage.engine import create_records_engine
from voicebot.storage.migrate import (
    LEGACY_REVISIONS,
    MIGRATIONS_DIR,
    SchemaTooNewError,
    UnversionedSchemaError,
    current_revision,
    downgrade,
    head_revision,
    legacy_versions,
    new_revision,
    upgrade,
)
from voicebot.storage.numbers import NumberVault
from voicebot.storage.records import Records
from voicebot.storage.schema import Base, JSONType, UTCDateTime

T0 = datetime(2026, 1, 2, 10, 0, 0, tzinfo=UTC)
HEAD = head_revision()


# --------------------------------------------------------------------------- helpers


def _engine(url: str) -> Engine:
    return create_records_engine(url)


def _state(url: str) -> tuple[str | None, list[int]]:
    """The Alembic revision and the versions listed in the 0.1 `schema_version` table."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            versions = []
            if inspect(conn).has_table("schema_version"):
                query = select(legacy_versions.c.version).order_by(legacy_versions.c.version)
                versions = list(conn.scalars(query))
            return current_revision(conn), versions
    finally:
        engine.dispose()


_head_schemas: dict[str, dict[str, Any]] = {}


@pytest.fixture
def head_schema(db_url: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The schema a new database gets from the revisions, on the backend of `db_url`."""
    backend = make_url(db_url).get_backend_name()
    if backend not in _head_schemas:
        if backend == "postgresql":
            url = request.getfixturevalue("postgres").create_database("vb_head_schema")
        else:
            url = f"sqlite:///{request.getfixturevalue('tmp_path') / 'head.db'}"
        engine = _engine(url)
        upgrade(engine)
        _head_schemas[backend] = schema_snapshot(engine)
        engine.dispose()
    return _head_schemas[backend]


# The tables as 0.1's migration 1 made them, for writing rows into a database at version 1..4.
_v1 = MetaData()
V1_CALLS = Table(
    "calls",
    _v1,
    Column("id", String(64), primary_key=True),
    Column("gateway", String(32)),
    Column("from_number", String(64)),
    Column("to_number", String(64)),
    Column("stream_id", String(128)),
    Column("started_at", UTCDateTime),
    Column("ended_at", UTCDateTime),
    Column("end_reason", String(64)),
    Column("recording_path", Text),
    Column("metadata", JSONType),
)
V1_TURNS = Table(
    "turns",
    _v1,
    Column("id", Integer, primary_key=True),
    Column("call_id", String(64)),
    Column("index", Integer),
    Column("started_at", UTCDateTime),
    Column("caller_text", Text),
    Column("bot_text", Text),
    Column("route", String(32)),
    Column("retrieved", JSONType),
    Column("dtmf", String(64)),
    Column("interrupted", Boolean),
    Column("latency", JSONType),
)


def _write_v1_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            V1_CALLS.insert().values(
                id="old-call",
                gateway="twilio",
                from_number="+15551112222",
                to_number="+15553334444",
                stream_id="MZ1",
                started_at=T0,
                ended_at=T0.replace(minute=1),
                end_reason="hangup",
                recording_path=None,
                metadata={"campaign": "spring"},
            )
        )
        conn.execute(
            V1_TURNS.insert().values(
                call_id="old-call",
                index=0,
                started_at=T0,
                caller_text="hi",
                bot_text="hello",
                route="greeting",
                retrieved=[{"id": "faq-1", "score": 0.5, "question": "q"}],
                dtmf="",
                interrupted=False,
                latency={"vad_stop": 200},
            )
        )


REVISION = '''"""{doc}"""

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
{body}


def downgrade():
    pass
'''


def _scripts_with(tmp_path: Path, *revisions: tuple[str, str, str, str]) -> Path:
    """A copy of the packaged migrations plus extra revisions (rev, down_revision, doc, body)."""
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    for rev, down, doc, body in revisions:
        indented = "\n".join("    " + line for line in body.strip().splitlines())
        (target / "versions" / f"{rev}_test.py").write_text(
            REVISION.format(doc=doc, rev=rev, down=down, body=indented)
        )
    return target


# --------------------------------------------------------------------------- new databases


def test_a_new_database_is_upgraded_to_head_once(db_url: str) -> None:
    first = Records(db_url)
    assert first.schema_version == HEAD == LEGACY_REVISIONS[-1]
    first.close()
    assert _state(db_url) == (HEAD, [1, 2, 3, 4])
    engine = _engine(db_url)
    with engine.connect() as conn:
        stamped = list(conn.execute(select(legacy_versions).order_by(legacy_versions.c.version)))
    assert stamped[0].name == "calls and turns"
    second = Records(db_url)
    assert second.schema_version == HEAD
    assert upgrade(second.engine) == HEAD
    second.close()
    with engine.connect() as conn:
        assert list(conn.execute(select(legacy_versions).order_by(legacy_versions.c.version))) == stamped
    engine.dispose()


def test_orm_models_match_the_migrated_schema(records: Records) -> None:
    # A model changed without a revision (or the reverse) shows up as a difference here, exactly as
    # `migrate revision --autogenerate` would write it.
    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        return not (type_ == "table" and name == "schema_version")

    with records.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": include_name})
        assert compare_metadata(context, Base.metadata) == []
    inspector = inspect(records.engine)
    for table in Base.metadata.sorted_tables:
        migrated = {c["name"]: c["nullable"] for c in inspector.get_columns(table.name)}
        modelled = {c.name: c.nullable for c in table.columns}
        assert migrated == modelled, table.name


def test_concurrent_first_start(db_url: str) -> None:
    # Several workers starting together on a new database: one migrates, the others wait and find
    # nothing to do.
    results: list[str | None] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker() -> None:
        try:
            start.wait()
            recs = Records(db_url)
            results.append(recs.schema_version)
            recs.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert results == [HEAD] * 4
    assert _state(db_url) == (HEAD, [1, 2, 3, 4])


def test_unversioned_tables_are_refused(db_url: str) -> None:
    engine = _engine(db_url)
    Base.metadata.create_all(engine)
    with pytest.raises(UnversionedSchemaError, match="calls table"):
        upgrade(engine)
    assert _state(db_url)[0] is None
    engine.dispose()


# --------------------------------------------------------------------------- the 0.1 runner's databases


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_a_database_of_the_old_runner_is_stamped_and_upgraded(
    db_url: str, version: int, head_schema: dict[str, Any]
) -> None:
    engine = _engine(db_url)
    assert legacy_runner.migrate(engine, legacy_runner.MIGRATIONS[:version]) == version
    if version:
        _write_v1_rows(engine)
    with engine.connect() as conn:
        old_rows = list(conn.execute(select(legacy_versions).order_by(legacy_versions.c.version)))
    assert [row.version for row in old_rows] == list(range(1, version + 1))

    records = Records(db_url, numbers=NumberVault("encrypt", Fernet.generate_key()))
    assert records.schema_version == HEAD
    assert schema_snapshot(engine) == head_schema
    with engine.connect() as conn:
        rows = list(conn.execute(select(legacy_versions).order_by(legacy_versions.c.version)))
    assert rows[:version] == old_rows  # the runner's own rows are kept as they were
    assert [row.version for row in rows] == [1, 2, 3, 4]
    engine.dispose()

    if version:
        call = records.get_call("old-call")
        assert call is not None
        assert (call.started_at, call.ended_at, call.metadata) == (
            T0,
            T0.replace(minute=1),
            {"campaign": "spring"},
        )
        assert (call.direction, call.outcome, call.transfer_target, call.external_id) == (
            "inbound",
            "",
            "",
            "",
        )
        [turn] = call.turns
        assert (turn.caller_text, turn.bot_text, turn.latency) == ("hi", "hello", {"vad_stop": 200})
        assert turn.retrieved == [{"id": "faq-1", "score": 0.5, "question": "q"}]
        assert (turn.reason, turn.intent, turn.intent_confidence, turn.sentiment, turn.slots) == (
            "",
            "",
            None,
            None,
            {},
        )
        # Numbers from before the vault are still there, and protected at start as before.
        assert call.from_number == "+15551112222"
        assert records.protect_clear_numbers() == 1
        assert records.reveal_numbers("old-call") == ("+15551112222", "+15553334444")
        assert [c.id for c in records.list_calls(number="+1 555 111 2222")] == ["old-call"]
    records.add_turn("old-call" if version else records.start_call(gateway="sip"), slots={"a": 1})
    records.close()


def test_the_old_runner_still_opens_a_database_at_its_last_version(db_url: str) -> None:
    # Rolling back to 0.1 works while no revision past 0004 has been applied.
    Records(db_url).close()
    engine = _engine(db_url)
    assert legacy_runner.migrate(engine) == 4
    assert _state(db_url) == (HEAD, [1, 2, 3, 4])
    engine.dispose()


def test_databases_from_a_newer_voicebot_are_refused(db_url: str) -> None:
    Records(db_url).close()
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(SchemaTooNewError, match="0099"):
        Records(db_url)
    assert _state(db_url) == ("0099", [1, 2, 3, 4])
    engine.dispose()


def test_a_database_the_old_runner_numbered_past_4_is_refused(db_url: str) -> None:
    engine = _engine(db_url)
    legacy_runner.migrate(engine)
    with engine.begin() as conn:
        conn.execute(legacy_versions.insert().values(version=99, name="future", applied_at=T0))
    with pytest.raises(SchemaTooNewError, match="99"):
        Records(db_url)
    assert _state(db_url)[0] is None
    engine.dispose()


# --------------------------------------------------------------------------- later revisions


def test_a_later_revision_is_applied_once_and_guards_old_releases(db_url: str, tmp_path: Path) -> None:
    scripts = _scripts_with(
        tmp_path,
        (
            "0005",
            "0004",
            "calls.campaign_id",
            'op.add_column("calls", sa.Column("campaign_id", sa.String(64)))',
        ),
    )
    Records(db_url).close()
    engine = _engine(db_url)
    assert upgrade(engine, script_location=scripts) == "0005"
    assert upgrade(engine, script_location=scripts) == "0005"  # a second ADD COLUMN would raise
    assert "campaign_id" in {c["name"] for c in inspect(engine).get_columns("calls")}
    assert _state(db_url) == ("0005", [1, 2, 3, 4, 5])
    # This voicebot (head 0004) and the 0.1 runner (version 4) both refuse the newer schema.
    with pytest.raises(SchemaTooNewError, match="0005"):
        upgrade(engine)
    with pytest.raises(legacy_runner.SchemaTooNewError, match="version 5"):
        legacy_runner.migrate(engine)
    engine.dispose()


def test_a_failing_revision_leaves_nothing_behind(db_url: str, tmp_path: Path) -> None:
    scripts = _scripts_with(
        tmp_path,
        (
            "0005",
            "0004",
            "broken",
            'op.create_table("half_done", sa.Column("x", sa.Integer))\n'
            'op.add_column("calls", sa.Column("y", sa.Integer))\n'
            'raise RuntimeError("boom")',
        ),
    )
    Records(db_url).close()
    engine = _engine(db_url)
    with pytest.raises(RuntimeError, match="boom"):
        upgrade(engine, script_location=scripts)
    assert "half_done" not in inspect(engine).get_table_names()
    assert "y" not in {c["name"] for c in inspect(engine).get_columns("calls")}
    engine.dispose()
    assert _state(db_url) == (HEAD, [1, 2, 3, 4])


def test_a_table_rebuild_keeps_the_rows_that_point_at_it(db_url: str, tmp_path: Path) -> None:
    # On SQLite a batch ALTER (here: a column type) copies `calls` and drops the original: with
    # foreign keys on, that drop would cascade to every turn. The migration runs with them off, and
    # checks them before the commit.
    scripts = _scripts_with(
        tmp_path,
        (
            "0005",
            "0004",
            "wider gateway",
            'with op.batch_alter_table("calls") as batch:\n'
            '    batch.alter_column("gateway", type_=sa.String(48), existing_nullable=False)',
        ),
    )
    records = Records(db_url)
    records.start_call("c", gateway="sip", started_at=T0)
    for _ in range(3):
        records.add_turn("c")
    assert upgrade(records.engine, script_location=scripts) == "0005"
    call = records.get_call("c")
    assert call is not None and [t.index for t in call.turns] == [0, 1, 2]
    if records.engine.dialect.name == "sqlite":
        with records.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    records.close()


def test_a_forked_history_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    scripts = _scripts_with(
        tmp_path,
        ("0005", "0004", "one branch", "pass"),
        ("0006", "0004", "another branch", "pass"),
    )
    engine = _engine(sqlite_url)
    with pytest.raises(CommandError, match=r"[Mm]ultiple head"):
        upgrade(engine, script_location=scripts)
    engine.dispose()
    assert _state(sqlite_url)[0] is None


def test_downgrade_and_upgrade_again(db_url: str, head_schema: dict[str, Any]) -> None:
    records = Records(db_url)
    records.start_call("c", gateway="sip", started_at=T0, direction="outbound", external_id="x")
    records.add_turn("c", caller_text="hi", slots={"a": 1})
    assert downgrade(records.engine, "0001") == "0001"
    assert _state(db_url) == ("0001", [1])
    assert {c["name"] for c in inspect(records.engine).get_columns("turns")} >= {"caller_text"}
    assert "slots" not in {c["name"] for c in inspect(records.engine).get_columns("turns")}
    assert upgrade(records.engine) == HEAD
    call = records.get_call("c")
    assert call is not None and [t.caller_text for t in call.turns] == ["hi"]
    assert (call.direction, call.turns[0].slots) == ("inbound", {})  # dropped columns come back empty
    assert schema_snapshot(records.engine) == head_schema
    assert downgrade(records.engine, "base") is None
    assert set(inspect(records.engine).get_table_names()) == {"alembic_version", "schema_version"}
    assert _state(db_url) == (None, [])
    assert upgrade(records.engine) == HEAD
    records.close()


def test_the_revision_command_writes_the_next_numbered_revision(sqlite_url: str, tmp_path: Path) -> None:
    scripts = _scripts_with(tmp_path)
    path = new_revision("nothing yet", autogenerate=True, script_location=scripts)
    assert path.parent == scripts / "versions" and path.name == "0005_nothing_yet.py"
    written = path.read_text()
    assert 'revision: str = "0005"' in written and 'down_revision: str | None = "0004"' in written
    # The models match head, so autogenerate found nothing to do.
    assert "op." not in written.split("def upgrade")[1].split("def downgrade")[0]
    engine = _engine(sqlite_url)
    assert upgrade(engine, script_location=scripts) == "0005"
    engine.dispose()
