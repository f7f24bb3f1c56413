"""calls and turns

Revision ID: 0001
Revises:
Create Date: 2026-12-03

Migration 1 of voicebot 0.1's own runner, unchanged: a database that runner left at version 1 or
later is stamped past this revision instead of running it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the column types (what the ORM's UTCDateTime and JSONType emit as DDL).
UTC_DATETIME = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("gateway", sa.String(32), nullable=False),
        sa.Column("from_number", sa.String(64), nullable=False),
        sa.Column("to_number", sa.String(64), nullable=False),
        sa.Column("stream_id", sa.String(128), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("ended_at", UTC_DATETIME, nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=False),
        sa.Column("recording_path", sa.Text, nullable=True),
        sa.Column("metadata", JSON, nullable=False),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(64), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("caller_text", sa.Text, nullable=False),
        sa.Column("bot_text", sa.Text, nullable=False),
        sa.Column("route", sa.String(32), nullable=False),
        sa.Column("retrieved", JSON, nullable=False),
        sa.Column("dtmf", sa.String(64), nullable=False),
        sa.Column("interrupted", sa.Boolean, nullable=False),
        sa.Column("latency", JSON, nullable=False),
        sa.UniqueConstraint("call_id", "index", name="uq_turns_call_index"),
    )


def downgrade() -> None:
    op.drop_table("turns")
    op.drop_index("ix_calls_started_at", table_name="calls")
    op.drop_table("calls")
