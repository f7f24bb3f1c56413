"""Call and turn records in SQL: SQLite file by default, PostgreSQL (or any SQLAlchemy URL) otherwise.

Every method is synchronous and short: the asyncio server calls them through `asyncio.to_thread`.
Each call opens its own session, so one `Records` is safe to share between threads.

Schema changes go through `MIGRATIONS`: append a `Migration` with the next version number. A migration
describes its own tables (Core `Table`s or DDL), never the ORM classes below, because those always show
the *latest* schema and migration 1 must keep creating version 1 of it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from voicebot.storage.numbers import NumberVault, StoredNumber

# Long enough to ride out another process's write transaction (they last milliseconds), short enough
# that a wedged writer surfaces as an error instead of a silent hang.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution option that marks a session as read-only, so SQLite may begin it DEFERRED.
_READ_ONLY = "voicebot_read_only"
# Arbitrary constant key: PostgreSQL advisory lock that serialises migrations between workers.
_PG_MIGRATION_LOCK = 0x766F6963


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zone type)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive time is ambiguous (local? UTC?); refusing it beats storing a wrong hour.
            raise ValueError(f"naive datetime {value!r}: pass an aware one, e.g. datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact); plain JSON text elsewhere.
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _moment(value: datetime | None) -> datetime:
    """`value`, or now when None. Checked here so callers get a plain ValueError, not a StatementError."""
    if value is None:
        return utcnow()
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware one, e.g. datetime.now(UTC)")
    return value


# --------------------------------------------------------------------------- ORM (latest schema)


class Base(DeclarativeBase):
    """Declarative base for every voicebot table; other modules add their models here."""


class CallRow(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gateway: Mapped[str] = mapped_column(String(32))
    from_number: Mapped[str] = mapped_column(String(64), default="")
    to_number: Mapped[str] = mapped_column(String(64), default="")
    stream_id: Mapped[str] = mapped_column(String(128), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str] = mapped_column(String(64), default="")
    recording_path: Mapped[str | None] = mapped_column(Text)
    # `metadata` is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    direction: Mapped[str] = mapped_column(String(16), default="inbound")
    # Outbound: ringing, answered, busy, no-answer, rejected, failed. Inbound: empty.
    outcome: Mapped[str] = mapped_column(String(32), default="")
    transfer_target: Mapped[str] = mapped_column(String(256), default="")
    transfer_status: Mapped[str] = mapped_column(String(128), default="")
    external_id: Mapped[str] = mapped_column(String(128), default="")
    from_secret: Mapped[str] = mapped_column(Text, default="")
    to_secret: Mapped[str] = mapped_column(Text, default="")
    from_hash: Mapped[str] = mapped_column(String(64), default="")
    to_hash: Mapped[str] = mapped_column(String(64), default="")


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TurnRow(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("call_id", "index", name="uq_turns_call_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    caller_text: Mapped[str] = mapped_column(Text, default="")
    bot_text: Mapped[str] = mapped_column(Text, default="")
    route: Mapped[str] = mapped_column(String(32), default="")
    retrieved: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    dtmf: Mapped[str] = mapped_column(String(64), default="")
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    latency: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    intent: Mapped[str] = mapped_column(String(64), default="")
    intent_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    sentiment: Mapped[float | None] = mapped_column(Float, nullable=True)
    slots: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


# --------------------------------------------------------------------------- migrations


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


# --------------------------------------------------------------------------- engine


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event (below) choose BEGIN vs BEGIN IMMEDIATE instead of pysqlite.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    # WAL: readers (CLI, web console) never block the call writers, and vice versa.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # In WAL mode NORMAL loses at most the last commits on power loss, never consistency.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A deferred transaction that reads, then writes, fails at once with "database is locked" when
    # another connection committed in between (the busy timeout does not apply to that case).
    # Writers therefore take the write lock up front and queue on busy_timeout instead.
    read_only = conn.get_execution_options().get(_READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _is_memory_sqlite(database: str | None) -> bool:
    return not database or database == ":memory:" or "mode=memory" in database


def create_records_engine(url: str) -> Engine:
    """An engine tuned for many short transactions from several threads."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if _is_memory_sqlite(parsed.database):
        # One shared connection, or every pooled connection would see its own empty database.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(parsed.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


# --------------------------------------------------------------------------- public records


@dataclass(frozen=True, slots=True)
class RetrievedHit:
    id: str
    score: float
    question: str


@dataclass(frozen=True, slots=True)
class Turn:
    id: int
    call_id: str
    index: int
    started_at: datetime
    caller_text: str
    bot_text: str
    route: str
    retrieved: list[dict[str, Any]]
    dtmf: str
    interrupted: bool
    latency: dict[str, Any]
    reason: str = ""
    intent: str = ""
    intent_confidence: float | None = None
    sentiment: float | None = None
    slots: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallSummary:
    id: str
    gateway: str
    from_number: str
    to_number: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str
    turn_count: int
    direction: str = "inbound"
    outcome: str = ""
    external_id: str = ""
    from_hash: str = ""

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True, slots=True)
class CallDetail:
    id: str
    gateway: str
    from_number: str
    to_number: str
    stream_id: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str
    recording_path: str | None
    metadata: dict[str, Any]
    turns: list[Turn]
    direction: str = "inbound"
    outcome: str = ""
    transfer_target: str = ""
    transfer_status: str = ""
    external_id: str = ""

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else (self.ended_at - self.started_at).total_seconds()


def _retrieved_json(retrieved: Sequence[RetrievedHit | Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = []
    for hit in retrieved or ():
        if isinstance(hit, RetrievedHit):
            hits.append({"id": hit.id, "score": hit.score, "question": hit.question})
        else:
            hits.append(dict(hit))
    return hits


def _turn(row: TurnRow) -> Turn:
    return Turn(
        id=row.id,
        call_id=row.call_id,
        index=row.index,
        started_at=row.started_at,
        caller_text=row.caller_text,
        bot_text=row.bot_text,
        route=row.route,
        retrieved=list(row.retrieved or []),
        dtmf=row.dtmf,
        interrupted=row.interrupted,
        latency=dict(row.latency or {}),
        reason=row.reason or "",
        intent=row.intent or "",
        intent_confidence=row.intent_confidence,
        sentiment=row.sentiment,
        slots=dict(row.slots or {}),
    )


def _summary(row: CallRow, turn_count: int) -> CallSummary:
    return CallSummary(
        id=row.id,
        gateway=row.gateway,
        from_number=row.from_number,
        to_number=row.to_number,
        started_at=row.started_at,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
        turn_count=turn_count,
        direction=row.direction,
        outcome=row.outcome,
        external_id=row.external_id,
        from_hash=row.from_hash,
    )


class Redacts(Protocol):
    def redact(self, text: str) -> str: ...

    def redact_obj(self, obj: Any) -> Any: ...


class Records:
    """Calls and their turns. Construct once per process; migrates the schema on start.

    With a `redactor`, turn texts, retrieved passages and slots are masked before they are written,
    so the database never holds the personal data a caller spoke.
    """

    def __init__(
        self,
        url: str,
        *,
        run_migrations: bool = True,
        redactor: Redacts | None = None,
        numbers: NumberVault | None = None,
    ) -> None:
        self.url = url
        self.redactor = redactor
        self.numbers = numbers
        self.engine = create_records_engine(url)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(self.engine.execution_options(**{_READ_ONLY: True}))
        if run_migrations:
            self.schema_version = migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._writer.begin() as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    def writing(self) -> contextlib.AbstractContextManager[Session]:
        """A write transaction, for the stores that share this database (API keys)."""
        return self._write()

    def reading(self) -> contextlib.AbstractContextManager[Session]:
        return self._read()

    # ----------------------------------------------------------------- calls

    def start_call(
        self,
        call_id: str | None = None,
        *,
        gateway: str,
        from_number: str = "",
        to_number: str = "",
        stream_id: str = "",
        started_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        recording_path: str | None = None,
        direction: str = "inbound",
        outcome: str = "",
        external_id: str = "",
    ) -> str:
        """Record a new call and return its id (a new uuid4 hex when `call_id` is None).

        With a number vault, the numbers are stored as it says (encrypted or hashed, and masked).
        A duplicate id raises `sqlalchemy.exc.IntegrityError`.
        """
        call_id = call_id or uuid.uuid4().hex
        caller, callee = self._protect(from_number), self._protect(to_number)
        row = CallRow(
            id=call_id,
            gateway=gateway,
            from_number=caller.shown,
            to_number=callee.shown,
            from_secret=caller.secret,
            to_secret=callee.secret,
            from_hash=caller.digest,
            to_hash=callee.digest,
            external_id=external_id,
            stream_id=stream_id,
            started_at=_moment(started_at),
            ended_at=None,
            end_reason="",
            recording_path=recording_path,
            meta=dict(metadata or {}),
            direction=direction,
            outcome=outcome,
        )
        with self._write() as session:
            session.add(row)
        return call_id

    def _protect(self, number: str) -> StoredNumber:
        return self.numbers.protect(number) if self.numbers else StoredNumber(number, "", "")

    def protect_clear_numbers(self) -> int:
        """Encrypt or hash the numbers of calls stored in clear (before the vault, or in 'clear' mode)."""
        if self.numbers is None or self.numbers.mode == "clear":
            return 0
        changed = 0
        with self._write() as session:
            rows = session.scalars(
                select(CallRow).where(
                    ((CallRow.from_hash == "") & (CallRow.from_number != ""))
                    | ((CallRow.to_hash == "") & (CallRow.to_number != ""))
                )
            ).all()
            for row in rows:
                for side in ("from", "to"):
                    if getattr(row, f"{side}_hash") or not getattr(row, f"{side}_number"):
                        continue
                    stored = self.numbers.protect(getattr(row, f"{side}_number"))
                    setattr(row, f"{side}_number", stored.shown)
                    setattr(row, f"{side}_secret", stored.secret)
                    setattr(row, f"{side}_hash", stored.digest)
                changed += 1
        return changed

    def reveal_numbers(self, call_id: str) -> tuple[str, str]:
        """A call's numbers in clear (KeyError: no such call; ValueError: they cannot be shown)."""
        with self._read() as session:
            row = session.get(CallRow, call_id)
            if row is None:
                raise KeyError(call_id)
            sides = [
                StoredNumber(row.from_number, row.from_secret, row.from_hash),
                StoredNumber(row.to_number, row.to_secret, row.to_hash),
            ]
        if self.numbers is None:
            if any(side.digest for side in sides):
                raise ValueError("these numbers are protected; the secret key is needed to show them")
            return sides[0].shown, sides[1].shown
        return self.numbers.reveal(sides[0]), self.numbers.reveal(sides[1])

    def last_call_for(self, gateway: str, external_id: str) -> CallSummary | None:
        """The latest call a gateway stored under its own id for it (a Twilio CallSid), if any."""
        stmt = (
            select(CallRow)
            .where(CallRow.gateway == gateway, CallRow.external_id == external_id)
            .order_by(CallRow.started_at.desc())
            .limit(1)
        )
        with self._read() as session:
            row = session.scalars(stmt).first()
            return None if row is None else _summary(row, 0)

    def last_activity(self, call_id: str) -> datetime | None:
        """When the call was last heard from: its latest turn, else its start. None: no such call."""
        with self._read() as session:
            row = session.get(CallRow, call_id)
            if row is None:
                return None
            latest = session.scalar(select(func.max(TurnRow.started_at)).where(TurnRow.call_id == call_id))
            return max(row.started_at, latest) if latest is not None else row.started_at

    def exists(self, call_id: str) -> bool:
        with self._read() as session:
            return session.get(CallRow, call_id) is not None

    def end_call(
        self,
        call_id: str,
        reason: str,
        recording_path: str | None = None,
        *,
        ended_at: datetime | None = None,
    ) -> bool:
        """Close a call. Returns False (and keeps the first reason) if it was already ended.

        Both the gateway (hangup) and the session (bot goodbye) may report an end: the first wins.
        A recording path is stored either way when the call had none.
        """
        with self._write() as session:
            row = session.get(CallRow, call_id, with_for_update=True)
            if row is None:
                raise KeyError(call_id)
            if recording_path and not row.recording_path:
                row.recording_path = recording_path
            if row.ended_at is not None:
                return False
            row.ended_at = _moment(ended_at)
            row.end_reason = reason
            return True

    def set_outcome(self, call_id: str, outcome: str) -> None:
        """Where an outbound call stands: ringing, answered, busy, no-answer, rejected, failed."""
        self._update_call(call_id, outcome=outcome)

    def set_transfer(self, call_id: str, target: str, status: str) -> None:
        """A handoff to a human: where to, and how it went (transferred, failed: 486, ...)."""
        self._update_call(call_id, transfer_target=target, transfer_status=status)

    def set_gateway_ids(self, call_id: str, *, stream_id: str, external_id: str) -> None:
        """The gateway's own ids for a call, once it has them (an outbound SIP call's Call-ID)."""
        self._update_call(call_id, stream_id=stream_id, external_id=external_id)

    def set_recording(self, call_id: str, recording_path: str) -> None:
        self._update_call(call_id, recording_path=recording_path)

    def _update_call(self, call_id: str, **values: Any) -> None:
        with self._write() as session:
            row = session.get(CallRow, call_id, with_for_update=True)
            if row is None:
                raise KeyError(call_id)
            for name, value in values.items():
                setattr(row, name, value)

    def mark_unfinished_calls(self, reason: str = "server_restart", *, exclude: Collection[str] = ()) -> int:
        """Close calls left open by a crash; returns how many. Run it at startup.

        `ended_at` becomes the call's last recorded activity (its last turn start, else its start), so
        durations don't include the downtime. With several workers on one database, pass the ids that
        are still live elsewhere (e.g. from `LiveCalls.list()`) as `exclude`.
        """
        last_turn = (
            select(func.max(TurnRow.started_at)).where(TurnRow.call_id == CallRow.id).scalar_subquery()
        )
        stmt = (
            update(CallRow)
            .where(CallRow.ended_at.is_(None))
            .values(ended_at=func.coalesce(last_turn, CallRow.started_at), end_reason=reason)
            .execution_options(synchronize_session=False)
        )
        if exclude:
            stmt = stmt.where(CallRow.id.not_in(list(exclude)))
        with self._write() as session:
            return session.execute(stmt).rowcount or 0

    # ----------------------------------------------------------------- turns

    def add_turn(
        self,
        call_id: str,
        *,
        index: int | None = None,
        started_at: datetime | None = None,
        caller_text: str = "",
        bot_text: str = "",
        route: str = "",
        retrieved: Sequence[RetrievedHit | Mapping[str, Any]] | None = None,
        dtmf: str = "",
        interrupted: bool = False,
        latency: Mapping[str, Any] | None = None,
        reason: str = "",
        intent: str = "",
        intent_confidence: float | None = None,
        sentiment: float | None = None,
        slots: Mapping[str, Any] | None = None,
    ) -> int:
        """Append a turn and return its row id. `index` defaults to the call's next turn number.

        Raises KeyError for an unknown call, IntegrityError for an index already taken.
        """
        with self._write() as session:
            # Row lock on PostgreSQL (SQLite's write lock already serialises) so two writers can't
            # pick the same next index.
            if session.get(CallRow, call_id, with_for_update=True) is None:
                raise KeyError(call_id)
            if index is None:
                last = session.scalar(select(func.max(TurnRow.index)).where(TurnRow.call_id == call_id))
                index = 0 if last is None else last + 1
            row = TurnRow(
                call_id=call_id,
                index=index,
                started_at=_moment(started_at),
                caller_text=self._clean(caller_text),
                bot_text=self._clean(bot_text),
                route=route,
                retrieved=self._clean_obj(_retrieved_json(retrieved)),
                dtmf=self._clean(dtmf),
                interrupted=interrupted,
                latency=dict(latency or {}),
                reason=self._clean(reason),
                intent=intent,
                intent_confidence=intent_confidence,
                sentiment=sentiment,
                slots=self._clean_obj(dict(slots or {})),
            )
            session.add(row)
            session.flush()
            return row.id

    def update_turn(
        self,
        turn_id: int,
        *,
        caller_text: str | None = None,
        bot_text: str | None = None,
        route: str | None = None,
        retrieved: Sequence[RetrievedHit | Mapping[str, Any]] | None = None,
        dtmf: str | None = None,
        interrupted: bool | None = None,
        latency: Mapping[str, Any] | None = None,
    ) -> None:
        """Change a turn as later facts arrive. None leaves a field alone.

        `latency` is *merged* into the stored dict, because stages finish at different moments
        (the first audio frame is sent after the turn row exists). The other fields are replaced.
        """
        with self._write() as session:
            row = session.get(TurnRow, turn_id, with_for_update=True)
            if row is None:
                raise KeyError(turn_id)
            if caller_text is not None:
                row.caller_text = self._clean(caller_text)
            if bot_text is not None:
                row.bot_text = self._clean(bot_text)
            if route is not None:
                row.route = route
            if retrieved is not None:
                row.retrieved = self._clean_obj(_retrieved_json(retrieved))
            if dtmf is not None:
                row.dtmf = self._clean(dtmf)
            if interrupted is not None:
                row.interrupted = interrupted
            if latency:
                # A new dict object: the JSON column does not track in-place mutation.
                row.latency = {**(row.latency or {}), **latency}

    def _clean(self, text: str) -> str:
        return self.redactor.redact(text) if self.redactor and text else text

    def _clean_obj(self, obj: Any) -> Any:
        return self.redactor.redact_obj(obj) if self.redactor else obj

    # ----------------------------------------------------------------- reading

    def list_calls(self, limit: int = 50, offset: int = 0, number: str = "") -> list[CallSummary]:
        """Newest calls first, each with its number of turns; `number`: only calls from or to it."""
        counts = (
            select(TurnRow.call_id, func.count(TurnRow.id).label("n")).group_by(TurnRow.call_id).subquery()
        )
        stmt = (
            select(CallRow, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.call_id == CallRow.id)
            .order_by(CallRow.started_at.desc(), CallRow.id.desc())
            .limit(limit)
            .offset(offset)
        )
        if number:
            digest = self.numbers.digest(number) if self.numbers else ""
            stmt = stmt.where(
                (CallRow.from_hash == digest)
                | (CallRow.to_hash == digest)
                | (CallRow.from_number == number)
                | (CallRow.to_number == number)
            )
        with self._read() as session:
            return [_summary(row, int(n)) for row, n in session.execute(stmt)]

    def get_call(self, call_id: str) -> CallDetail | None:
        """One call with its turns in order, or None."""
        with self._read() as session:
            row = session.get(CallRow, call_id)
            if row is None:
                return None
            turns = session.scalars(
                select(TurnRow).where(TurnRow.call_id == call_id).order_by(TurnRow.index)
            ).all()
            return CallDetail(
                id=row.id,
                gateway=row.gateway,
                from_number=row.from_number,
                to_number=row.to_number,
                stream_id=row.stream_id,
                started_at=row.started_at,
                ended_at=row.ended_at,
                end_reason=row.end_reason,
                recording_path=row.recording_path,
                metadata=dict(row.meta or {}),
                turns=[_turn(t) for t in turns],
                direction=row.direction,
                outcome=row.outcome,
                transfer_target=row.transfer_target,
                transfer_status=row.transfer_status,
                external_id=row.external_id,
            )
