"""SQLAlchemy engines for the records database: SQLite tuned for several writers, or any other URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import StaticPool

# Long enough to ride out another process's write transaction (they last milliseconds), short enough
# that a wedged writer surfaces as an error instead of a silent hang.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution option that marks a session as read-only, so SQLite may begin it DEFERRED.
READ_ONLY = "voicebot_read_only"


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event (below) choose BEGIN vs BEGIN IMMEDIATE instead of pysqlite.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    # First, so that the pragmas below also wait out another process's lock instead of failing.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # WAL: readers (CLI, web console) never block the call writers, and vice versa.
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL loses at most the last commits on power loss, never consistency.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A deferred transaction that reads, then writes, fails at once with "database is locked" when
    # another connection committed in between (the busy timeout does not apply to that case).
    # Writers therefore take the write lock up front and queue on busy_timeout instead.
    # The explicit BEGIN also makes DDL transactional (pysqlite alone commits before each ALTER),
    # which is what lets a failing migration leave nothing half done.
    read_only = conn.get_execution_options().get(READ_ONLY, False)
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
