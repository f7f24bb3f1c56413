"""call direction, outcome and transfer

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Migration 2 of voicebot 0.1's own runner, unchanged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = (
    ("direction", sa.String(16), "inbound"),
    ("outcome", sa.String(32), ""),
    ("transfer_target", sa.String(256), ""),
    ("transfer_status", sa.String(128), ""),
)


def upgrade() -> None:
    # ALTER TABLE ... ADD COLUMN on both backends; existing calls get the defaults.
    for name, type_, default in COLUMNS:
        op.add_column("calls", sa.Column(name, type_, nullable=False, server_default=default))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        for name, _type, _default in reversed(COLUMNS):
            batch.drop_column(name)
