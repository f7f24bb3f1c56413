"""protected numbers, external call ids and API keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

Migration 4 of voicebot 0.1's own runner, unchanged. Numbers already stored in clear stay so
here; `Records.protect_clear_numbers()`, run at every server start, encrypts or hashes them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

UTC_DATETIME = sa.DateTime(timezone=True)
COLUMNS = (
    ("external_id", sa.String(128)),
    ("from_secret", sa.Text()),
    ("to_secret", sa.Text()),
    ("from_hash", sa.String(64)),
    ("to_hash", sa.String(64)),
)
INDEXED = ("external_id", "from_hash", "to_hash")


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("calls", sa.Column(name, type_, nullable=False, server_default=""))
    for name in INDEXED:
        op.create_index(f"ix_calls_{name}", "calls", [name])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=True),
        sa.Column("revoked_at", UTC_DATETIME, nullable=True),
        sa.Column("last_used_at", UTC_DATETIME, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    for name in reversed(INDEXED):
        op.drop_index(f"ix_calls_{name}", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        for name, _type in reversed(COLUMNS):
            batch.drop_column(name)
