"""Schema migrations of the records database, with Alembic, configured in code (no alembic.ini).

The migration environment ships inside the package: `migrations/env.py` and one revision per
schema change in `migrations/versions/`. `upgrade(engine)` (what `Records(url)` runs at start)
brings any database to the newest revision, in one transaction, under a lock:

- A new, empty database is upgraded from nothing.
- A database made by voicebot 0.1, whose hand-written runner recorded its version N (1-4) in the
  `schema_version` table, is first *stamped* at revision `000N` (revision N does exactly what
  that runner's migration N did), then upgraded from there.
- A database at a revision this voicebot does not know was migrated by a newer voicebot:
  `SchemaTooNewError`, and nothing is touched.

`schema_version` stays, as a guard for old releases: after every run it lists one row per
revision in force, numbered 1..N like the old runner's migrations. A 0.1 server reading it
therefore sees version 4 while the schema is still the one it knows, and refuses to start
(its own SchemaTooNewError) as soon as a later revision has been applied.

Command line (adding a revision, migrating by hand): `python -m voicebot.storage.migrate --help`,
and docs/storage.md.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, delete, inspect, select, text
from sqlalchemy.engine import Connection

from voicebot.storage.engine import create_records_engine
from voicebot.storage.schema import UTCDateTime, utcnow

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import Script, ScriptDirectory

# Alembic is imported where it is used, after the log filter below is in place: importing it
# logs a line per plugin at INFO.

log = logging.getLogger(__name__)


class _AlembicChatter(logging.Filter):
    """Drops what Alembic logs at INFO on every start: its dialect, its plugins, and "non-transactional
    DDL" for SQLite (wrong here: engine.py makes it transactional). "Running upgrade" lines stay."""

    NOISE = ("Context impl ", "Will assume ", "setup plugin ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


_chatter = _AlembicChatter()
for _name in ("alembic.runtime.migration", "alembic.runtime.plugins"):
    logging.getLogger(_name).addFilter(_chatter)

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
# The 0.1 runner's migration N became revision LEGACY_REVISIONS[N - 1].
LEGACY_REVISIONS = ("0001", "0002", "0003", "0004")
LEGACY_TABLE = "schema_version"
# Arbitrary constant key: PostgreSQL advisory lock that serialises migrations between workers.
_PG_MIGRATION_LOCK = 0x766F6963

legacy_versions = Table(
    LEGACY_TABLE,
    MetaData(),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer voicebot than this one."""


class UnversionedSchemaError(RuntimeError):
    """The database has voicebot's tables but no record of which revision made them."""


def _ini_value(value: str) -> str:
    return value.replace("%", "%%")  # Config values go through configparser interpolation


def alembic_config(
    url: str = "",
    *,
    script_location: str | Path | None = None,
    connection: Connection | None = None,
) -> Config:
    """An Alembic `Config` for the in-package environment, for `alembic.command` functions.

    With `connection`, env.py runs on it (inside its transaction) instead of connecting to `url`.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _ini_value(str(script_location or MIGRATIONS_DIR)))
    config.set_main_option("path_separator", "os")
    if url:
        config.set_main_option("sqlalchemy.url", _ini_value(url))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory(script_location: str | Path | None = None) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(script_location=script_location))


def head_revision(script_location: str | Path | None = None) -> str:
    """The newest revision (an error if the history has forked into several heads)."""
    head = script_directory(script_location).get_current_head()
    if head is None:
        raise RuntimeError("the migration history is empty")
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at (None: not under Alembic yet)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, target: str = "head", *, script_location: str | Path | None = None) -> str:
    """Migrate to `target` (default: the newest revision); return the revision now in force.

    Give it an engine from `create_records_engine`: on SQLite that engine is what makes DDL
    transactional, so a failing revision leaves nothing half done. Safe to run from several
    processes at once: they queue on a lock and the later ones find nothing left to do.
    """
    revision = _migrate(engine, "upgrade", target, script_location)
    if revision is None:
        raise RuntimeError("the migration history is empty")
    return revision


def downgrade(engine: Engine, target: str, *, script_location: str | Path | None = None) -> str | None:
    """Migrate back to `target` (a revision, or "base" for an empty database)."""
    return _migrate(engine, "downgrade", target, script_location)


def _migrate(engine: Engine, direction: str, target: str, script_location: str | Path | None) -> str | None:
    from alembic import command

    script = script_directory(script_location)
    with _migration_connection(engine) as conn, conn.begin():
        _lock_for_migration(conn)
        before = _adopt(conn, script)
        config = alembic_config(script_location=script_location, connection=conn)
        getattr(command, direction)(config, target)
        revision = current_revision(conn)
        _write_legacy_versions(conn, script, revision)
        _check_foreign_keys(conn)
    if revision != before:
        log.info("records database migrated from revision %s to %s", before or "base", revision or "base")
    return revision


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for migrating; on SQLite, with foreign keys off while it migrates.

    SQLite changes most of a table by copying it into a new one and dropping the old (Alembic's
    batch mode), and with foreign keys on, dropping `calls` would delete every turn (ON DELETE
    CASCADE). The pragma cannot change inside a transaction, so it is set around it, and
    `_check_foreign_keys` verifies the result before the commit.
    """
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            yield conn
            return
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA foreign_keys=OFF")  # autocommit mode (engine.py): takes effect now
        try:
            yield conn
        finally:
            try:
                raw.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error:
                conn.invalidate()  # never hand a connection without foreign keys back to the pool


def _lock_for_migration(conn: Connection) -> None:
    # SQLite: the write transaction is already BEGIN IMMEDIATE, which excludes other writers.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})


def _adopt(conn: Connection, script: ScriptDirectory) -> str | None:
    """Stamp a database of the 0.1 runner at its revision; refuse one this voicebot cannot migrate.

    Returns the revision the database is at now (None: empty, to be migrated from the start).
    """
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(conn)
    heads = context.get_current_heads()
    if heads:
        known = {rev.revision for rev in script.walk_revisions("base", "heads")}
        unknown = sorted(set(heads) - known)
        if unknown:
            raise SchemaTooNewError(
                f"database schema is at revision {', '.join(unknown)}, which this voicebot does not "
                f"know (it knows up to {', '.join(script.get_heads())}): upgrade voicebot"
            )
        return heads[0] if len(heads) == 1 else None
    legacy = legacy_version(conn)
    if legacy:
        if legacy > len(LEGACY_REVISIONS):
            raise SchemaTooNewError(
                f"database schema is at version {legacy}, this voicebot knows up to "
                f"{len(LEGACY_REVISIONS)} of the old numbering: upgrade voicebot"
            )
        stamped = LEGACY_REVISIONS[legacy - 1]
        context.stamp(script, stamped)
        log.info(
            "records database: version %d of the 0.1 migration runner, stamped as revision %s",
            legacy,
            stamped,
        )
        return stamped
    if inspect(conn).has_table("calls"):
        raise UnversionedSchemaError(
            "the database has a calls table but neither alembic_version nor schema_version: it was "
            "not made by voicebot's migrations, so there is no telling which revision it is at"
        )
    return None


def legacy_version(conn: Connection) -> int | None:
    """The version in the old `schema_version` table (None: no table, or no rows)."""
    if not inspect(conn).has_table(LEGACY_TABLE):
        return None
    return conn.scalar(select(legacy_versions.c.version).order_by(legacy_versions.c.version.desc()))


def _history(script: ScriptDirectory, revision: str | None) -> list[Script]:
    """The revisions from the first one to `revision`, oldest first."""
    if revision is None:
        return []
    return list(reversed(list(script.iterate_revisions(revision, "base"))))


def _write_legacy_versions(conn: Connection, script: ScriptDirectory, revision: str | None) -> None:
    history = _history(script, revision)
    legacy_versions.create(conn, checkfirst=True)
    conn.execute(delete(legacy_versions).where(legacy_versions.c.version > len(history)))
    present = set(conn.scalars(select(legacy_versions.c.version)))
    rows = [
        {"version": n, "name": (rev.doc or rev.revision)[:200], "applied_at": utcnow()}
        for n, rev in enumerate(history, 1)
        if n not in present
    ]
    if rows:
        conn.execute(legacy_versions.insert(), rows)


def _check_foreign_keys(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        return  # PostgreSQL checks them on every statement, migrations included
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"the migration left {len(broken)} dangling foreign key(s): {broken[:5]}")


# --------------------------------------------------------------------------- command line


def next_revision_id(script_location: str | Path | None = None) -> str:
    """Revisions are numbered 0001, 0002, ... in the order they apply."""
    script = script_directory(script_location)
    head = script.get_current_head()
    return f"{len(_history(script, head)) + 1:04d}"


def new_revision(message: str, *, autogenerate: bool, script_location: str | Path | None = None) -> Path:
    """Write the next revision file; with `autogenerate`, pre-filled with the ORM-vs-head difference.

    The difference is taken against a throwaway SQLite database upgraded to head. Review the file:
    autogenerate misses renames and server defaults, and data changes are always by hand.
    """
    from alembic import command

    rev_id = next_revision_id(script_location)
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_records_engine(f"sqlite:///{Path(tmp) / 'head.db'}")
        try:
            upgrade(engine, script_location=script_location)
            with engine.begin() as conn:
                config = alembic_config(script_location=script_location, connection=conn)
                written = command.revision(config, message, autogenerate=autogenerate, rev_id=rev_id)
        finally:
            engine.dispose()
    scripts = written if isinstance(written, list) else [written]
    if not scripts or scripts[0] is None:
        raise RuntimeError("alembic wrote no revision")
    path = Path(scripts[0].path)
    _tidy(path)
    return path


def _tidy(path: Path) -> None:
    """Format a generated revision with ruff, when the environment has it (the dev venv does)."""
    ruff = Path(sys.executable).with_name("ruff")
    found = str(ruff) if ruff.exists() else shutil.which("ruff")
    if not found:
        return
    for args in (["check", "--fix-only", "--quiet"], ["format", "--quiet"]):
        subprocess.run([found, *args, str(path)], check=False, timeout=60, capture_output=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voicebot.storage.migrate", description="Records database migrations (Alembic)."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("upgrade", "downgrade"):
        cmd = sub.add_parser(name, help=f"{name} a database")
        cmd.add_argument("--url", required=True, help="SQLAlchemy URL, e.g. sqlite:///data/voicebot.db")
        cmd.add_argument("target", nargs="?" if name == "upgrade" else None, default="head")
    current = sub.add_parser("current", help="the revision a database is at")
    current.add_argument("--url", required=True)
    sub.add_parser("history", help="list the revisions, newest first")
    rev = sub.add_parser("revision", help="write the next revision file")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true", help="fill it from the ORM (schema.py)")
    args = parser.parse_args(argv)

    if args.cmd == "history":
        for script in script_directory().walk_revisions():
            print(f"{script.revision}  {script.doc}")
        return 0
    if args.cmd == "revision":
        print(new_revision(args.message, autogenerate=args.autogenerate))
        return 0
    engine = create_records_engine(args.url)
    try:
        if args.cmd == "current":
            with engine.connect() as conn:
                print(current_revision(conn) or f"none (old version table: {legacy_version(conn)})")
        elif args.cmd == "upgrade":
            print(upgrade(engine, args.target))
        else:
            print(downgrade(engine, args.target) or "base")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
