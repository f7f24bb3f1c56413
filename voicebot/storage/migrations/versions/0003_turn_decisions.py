"""turn reason, intent, sentiment and slots

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Migration 3 of voicebot 0.1's own runner, unchanged (slots: JSONB on PostgreSQL, JSON elsewhere).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("turns", sa.Column("reason", sa.Text, nullable=False, server_default=""))
    op.add_column("turns", sa.Column("intent", sa.String(64), nullable=False, server_default=""))
    op.add_column("turns", sa.Column("intent_confidence", sa.Float, nullable=True))
    op.add_column("turns", sa.Column("sentiment", sa.Float, nullable=True))
    op.add_column("turns", sa.Column("slots", JSON, nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        for name in ("slots", "sentiment", "intent_confidence", "intent", "reason"):
            batch.drop_column(name)
