"""The SQL tables of the records database, as ORM classes: always the *latest* schema.

Changing a class here changes nothing in a database by itself: every schema change also needs an
Alembic revision under `voicebot/storage/migrations/versions/` (see docs/storage.md). The tests
compare these classes with a migrated database, on SQLite and PostgreSQL, and fail when they differ.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
    external_id: Mapped[str] = mapped_column(String(128), default="", index=True)
    from_secret: Mapped[str] = mapped_column(Text, default="")
    to_secret: Mapped[str] = mapped_column(Text, default="")
    from_hash: Mapped[str] = mapped_column(String(64), default="", index=True)
    to_hash: Mapped[str] = mapped_column(String(64), default="", index=True)


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
