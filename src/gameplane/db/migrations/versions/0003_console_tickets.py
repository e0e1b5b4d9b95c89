"""Console tickets: single-use passes to a server's console websocket.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "console_tickets",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(36),
                  sa.ForeignKey("users.id", ondelete="CASCADE",
                                name=op.f("fk_console_tickets_user_id_users")),
                  nullable=False),
        sa.Column("instance_id", sa.String(20), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=True),
        sa.Column("api_key_id", sa.String(36), nullable=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("expires_at", when, nullable=False),
        sa.Column("auth_expires_at", when, nullable=True),
        sa.Column("used_at", when, nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_console_tickets")),
    )
    op.create_index(op.f("ix_console_tickets_user_id"), "console_tickets", ["user_id"])
    op.create_index(op.f("ix_console_tickets_expires_at"), "console_tickets", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_console_tickets_expires_at"), table_name="console_tickets")
    op.drop_index(op.f("ix_console_tickets_user_id"), table_name="console_tickets")
    op.drop_table("console_tickets")
