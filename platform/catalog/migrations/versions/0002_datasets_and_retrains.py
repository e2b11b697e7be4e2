"""datasets and retrains

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 14:11:54.715451
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "dataset_snapshots",
        sa.Column("snapshot_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("episode_count", sa.Integer(), nullable=False),
        sa.Column("newest_committed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("query", sa.JSON(), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_hash"),
    )
    with op.batch_alter_table("dataset_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_snapshots_created_at"), ["created_at"], unique=False)

    op.create_table(
        "retrain_runs",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=80), nullable=False),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("snapshot_hash", sa.String(length=64), nullable=True),
        sa.Column("dataset_hash", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=200), nullable=True),
        sa.Column("candidate", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
    )
    with op.batch_alter_table("retrain_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_retrain_runs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_retrain_runs_status"), ["status"], unique=False)

    op.create_table(
        "episode_validations",
        sa.Column("episode_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["episode_id"], ["episodes.episode_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("episode_id"),
    )
    with op.batch_alter_table("episode_validations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_episode_validations_status"), ["status"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("episode_validations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_episode_validations_status"))

    op.drop_table("episode_validations")
    with op.batch_alter_table("retrain_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrain_runs_status"))
        batch_op.drop_index(batch_op.f("ix_retrain_runs_created_at"))

    op.drop_table("retrain_runs")
    with op.batch_alter_table("dataset_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dataset_snapshots_created_at"))

    op.drop_table("dataset_snapshots")
