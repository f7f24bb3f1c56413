"""The hand-written migration runner of voicebot 0.1 (git 56ed3ad), frozen for the upgrade tests.

Copied verbatim from that release's voicebot/storage/records.py (the "migrations" section), with
the imports it needs: `migrate(engine, MIGRATIONS[:n])` leaves a database exactly where a 0.1
server with only the first n migrations would have, on SQLite and PostgreSQL alike. Do not edit
it to follow the current schema: it stands for databases that already exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection

from voicebot.storage.schema import JSONType, UTCDateTime, utcnow

_PG_MIGRATION_LOCK = 0x766F6963


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _migration_1_calls_and_turns(conn: Connection) -> None:
    # A frozen copy of the version-1 tables: later migrations alter them, the ORM moves on.
    md = MetaData()
    Table(
        "calls",
        md,
        Column("id", String(64), primary_key=True),
        Column("gateway", String(32), nullable=False),
        Column("from_number", String(64), nullable=False),
        Column("to_number", String(64), nullable=False),
        Column("stream_id", String(128), nullable=False),
        Column("started_at", UTCDateTime, nullable=False),
        Column("ended_at", UTCDateTime, nullable=True),
        Column("end_reason", String(64), nullable=False),
        Column("recording_path", Text, nullable=True),
        Column("metadata", JSONType, nullable=False),
        Index("ix_calls_started_at", "started_at"),
    )
    Table(
        "turns",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("call_id", String(64), ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        Column("index", Integer, nullable=False),
        Column("started_at", UTCDateTime, nullable=False),
        Column("caller_text", Text, nullable=False),
        Column("bot_text", Text, nullable=False),
        Column("route", String(32), nullable=False),
        Column("retrieved", JSONType, nullable=False),
        Column("dtmf", String(64), nullable=False),
        Column("interrupted", Boolean, nullable=False),
        Column("latency", JSONType, nullable=False),
        UniqueConstraint("call_id", "index", name="uq_turns_call_index"),
    )
    md.create_all(conn)


def _migration_2_direction_outcome_transfer(conn: Connection) -> None:
    for ddl in (
        "ALTER TABLE calls ADD COLUMN direction VARCHAR(16) NOT NULL DEFAULT 'inbound'",
        "ALTER TABLE calls ADD COLUMN outcome VARCHAR(32) NOT NULL DEFAULT ''",
        "ALTER TABLE calls ADD COLUMN transfer_target VARCHAR(256) NOT NULL DEFAULT ''",
        "ALTER TABLE calls ADD COLUMN transfer_status VARCHAR(128) NOT NULL DEFAULT ''",
    ):
        conn.execute(text(ddl))


def _migration_3_turn_decisions(conn: Connection) -> None:
    json_type = "JSONB" if conn.dialect.name == "postgresql" else "JSON"
    for ddl in (
        "ALTER TABLE turns ADD COLUMN reason TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE turns ADD COLUMN intent VARCHAR(64) NOT NULL DEFAULT ''",
        "ALTER TABLE turns ADD COLUMN intent_confidence FLOAT",
        "ALTER TABLE turns ADD COLUMN sentiment FLOAT",
        f"ALTER TABLE turns ADD COLUMN slots {json_type} NOT NULL DEFAULT '{{}}'",
    ):
        conn.execute(text(ddl))


def _migration_4_protected_numbers_and_api_keys(conn: Connection) -> None:
    for ddl in (
        "ALTER TABLE calls ADD COLUMN external_id VARCHAR(128) NOT NULL DEFAULT ''",
        "ALTER TABLE calls ADD COLUMN from_secret TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE calls ADD COLUMN to_secret TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE calls ADD COLUMN from_hash VARCHAR(64) NOT NULL DEFAULT ''",
        "ALTER TABLE calls ADD COLUMN to_hash VARCHAR(64) NOT NULL DEFAULT ''",
        "CREATE INDEX ix_calls_external_id ON calls (external_id)",
        "CREATE INDEX ix_calls_from_hash ON calls (from_hash)",
        "CREATE INDEX ix_calls_to_hash ON calls (to_hash)",
    ):
        conn.execute(text(ddl))
    md = MetaData()
    Table(
        "api_keys",
        md,
        Column("id", String(16), primary_key=True),
        Column("name", String(200), nullable=False),
        Column("role", String(32), nullable=False),
        Column("key_hash", String(64), nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("expires_at", UTCDateTime, nullable=True),
        Column("revoked_at", UTCDateTime, nullable=True),
        Column("last_used_at", UTCDateTime, nullable=True),
    )
    md.create_all(conn)


# Append only; never edit or reorder an entry that has shipped.
MIGRATIONS: list[Migration] = [
    Migration(1, "calls and turns", _migration_1_calls_and_turns),
    Migration(2, "call direction, outcome and transfer", _migration_2_direction_outcome_transfer),
    Migration(3, "turn reason, intent, sentiment and slots", _migration_3_turn_decisions),
    Migration(
        4, "protected numbers, external call ids and API keys", _migration_4_protected_numbers_and_api_keys
    ),
]

_version_md = MetaData()
schema_version = Table(
    "schema_version",
    _version_md,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer voicebot than this one."""


def _check_migration_list(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"MIGRATIONS must be numbered 1..N in order, got {versions}")


def _lock_for_migration(conn: Connection) -> None:
    # SQLite: the write transaction is already BEGIN IMMEDIATE, which excludes other writers.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})


def current_version(conn: Connection) -> int:
    schema_version.create(conn, checkfirst=True)
    return conn.scalar(select(func.max(schema_version.c.version))) or 0


def migrate(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the pending migrations in one transaction; return the schema version now in force.

    Give it an engine from `create_records_engine`: on SQLite that engine is what makes DDL
    transactional (pysqlite alone commits before each CREATE/ALTER), so a failing migration
    leaves nothing half done.

    Safe to run from several processes at once: they queue on a lock and the later ones find
    nothing left to do.
    """
    _check_migration_list(migrations)
    latest = len(migrations)
    with engine.begin() as conn:
        _lock_for_migration(conn)
        current = current_version(conn)
        if current > latest:
            raise SchemaTooNewError(
                f"database schema is at version {current}, this voicebot knows up to {latest}: upgrade it"
            )
        for migration in migrations[current:]:
            migration.apply(conn)
            conn.execute(
                insert(schema_version).values(
                    version=migration.version, name=migration.name, applied_at=utcnow()
                )
            )
    return latest
