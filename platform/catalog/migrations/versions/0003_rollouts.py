"""rollouts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 15:09:36.793374
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "policy_endpoints",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("handle", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", "model_name"),
    )
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.String(length=36), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("candidate_version", sa.String(length=64), nullable=False),
        sa.Column("champion_version", sa.String(length=64), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("awaiting_approval", sa.Boolean(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stage_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("rollout_id"),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollouts_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollouts_stage"), ["stage"], unique=False)

    op.create_table(
        "robot_assignments",
        sa.Column("robot_id", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("rollout_id", sa.String(length=36), nullable=True),
        sa.Column("cohort", sa.String(length=16), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["robot_id"], ["robots.robot_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("robot_id"),
    )
    op.create_table(
        "rollout_decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_stage", sa.String(length=16), nullable=False),
        sa.Column("to_stage", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.rollout_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout_decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollout_decisions_rollout_id"), ["rollout_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("rollout_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_decisions_rollout_id"))

    op.drop_table("rollout_decisions")
    op.drop_table("robot_assignments")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_stage"))
        batch_op.drop_index(batch_op.f("ix_rollouts_created_at"))

    op.drop_table("rollouts")
    op.drop_table("policy_endpoints")
