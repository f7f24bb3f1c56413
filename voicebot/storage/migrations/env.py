"""Alembic environment of the records database, run by `voicebot.storage.migrate` (no alembic.ini).

`migrate.alembic_config()` builds the configuration in code. When it carries a connection
(`config.attributes["connection"]`, what `migrate.upgrade` passes), the revisions run on it, inside
the caller's transaction and lock; otherwise env.py connects to `sqlalchemy.url` itself.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import JSON

from voicebot.storage.engine import create_records_engine
from voicebot.storage.migrate import LEGACY_TABLE
from voicebot.storage.schema import Base, UTCDateTime


def _include_name(name: str | None, type_: str, _parents: Any) -> bool:
    # The 0.1 version table is kept up to date by migrate.py, not by revisions.
    return not (type_ == "table" and name == LEGACY_TABLE)


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Our column types as a revision spells them (DDL types, no import from schema.py)."""
    if type_ != "type":
        return False
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, JSON) and "postgresql" in getattr(obj, "_variant_mapping", {}):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")'
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=Base.metadata,
        include_name=_include_name,
        # SQLite alters most things by copying the table: autogenerate writes batch operations,
        # which are plain ALTERs on PostgreSQL.
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
        **kwargs,
    )


def run() -> None:
    config = context.config
    if context.is_offline_mode():
        _configure(
            url=config.get_main_option("sqlalchemy.url"),
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url: use voicebot.storage.migrate")
    engine = create_records_engine(url)
    try:
        with engine.begin() as conn:
            _configure(connection=conn)
            context.run_migrations()
    finally:
        engine.dispose()


run()
