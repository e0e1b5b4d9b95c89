"""Users, instances and events.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", _when(), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'user')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(20), nullable=False),
        sa.Column("owner_id", sa.String(36), nullable=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("variables", _json(), nullable=False),
        sa.Column("ports", _json(), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("node", sa.String(255), nullable=True),
        sa.Column("agent_url", sa.String(2048), nullable=True),
        sa.Column("agent_token", sa.String(255), nullable=False),
        sa.Column("lifecycle", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("state", _json(), nullable=True),
        sa.Column("created_at", _when(), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", _when(), server_default=sa.func.now(), nullable=False),
        sa.Column("provision_deadline", _when(), nullable=True),
        sa.CheckConstraint("kind IN ('game', 'dev')", name=op.f("ck_instances_kind")),
        sa.CheckConstraint("lifecycle IN ('provisioning', 'active', 'failed', 'deleting', 'suspended')",
                           name=op.f("ck_instances_lifecycle")),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_instances_owner_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
    )
    op.create_index("uq_instances_owner_id_kind_name", "instances", ["owner_id", "kind", "name"], unique=True)
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("instance_id", sa.String(20), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sa.Column("created_at", _when(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_instance_id_id"), "events", ["instance_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_events_instance_id_id"), table_name="events")
    op.drop_table("events")
    op.drop_index("uq_instances_owner_id_kind_name", table_name="instances")
    op.drop_table("instances")
    op.drop_table("users")
