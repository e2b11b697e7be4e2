"""initial catalog

Revision ID: 0001
Revises:
Create Date: 2026-11-21 11:55:16.141602
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("action", sa.String(length=80), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)

    op.create_table(
        "embodiments",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "version"),
    )
    op.create_table(
        "robots",
        sa.Column("robot_id", sa.String(length=63), nullable=False),
        sa.Column("embodiment_name", sa.String(length=63), nullable=False),
        sa.Column("site", sa.String(length=63), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("robot_id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "episodes",
        sa.Column("episode_id", sa.String(length=36), nullable=False),
        sa.Column("robot_id", sa.String(length=63), nullable=False),
        sa.Column("embodiment_name", sa.String(length=63), nullable=False),
        sa.Column("embodiment_version", sa.Integer(), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("site", sa.String(length=63), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("fps", sa.Float(), nullable=False),
        sa.Column("num_frames", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("has_actions", sa.Boolean(), nullable=False),
        sa.Column("policy_version", sa.String(length=200), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("interventions", sa.Integer(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("quality", sa.JSON(), nullable=True),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["robot_id"],
            ["robots.robot_id"],
        ),
        sa.PrimaryKeyConstraint("episode_id"),
    )
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_episodes_committed_at"), ["committed_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_episodes_embodiment_name"), ["embodiment_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_episodes_has_actions"), ["has_actions"], unique=False)
        batch_op.create_index(batch_op.f("ix_episodes_robot_id"), ["robot_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_episodes_started_at"), ["started_at"], unique=False)

    op.create_table(
        "upload_sessions",
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("episode_id", sa.String(length=36), nullable=False),
        sa.Column("robot_id", sa.String(length=63), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["robot_id"],
            ["robots.robot_id"],
        ),
        sa.PrimaryKeyConstraint("session_id"),
    )
    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_upload_sessions_episode_id"), ["episode_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_upload_sessions_robot_id"), ["robot_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_upload_sessions_status"), ["status"], unique=False)

    op.create_table(
        "episode_tags",
        sa.Column("episode_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=63), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["episode_id"], ["episodes.episode_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("episode_id", "key"),
    )
    with op.batch_alter_table("episode_tags", schema=None) as batch_op:
        batch_op.create_index("ix_episode_tags_key_value", ["key", "value"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("episode_tags", schema=None) as batch_op:
        batch_op.drop_index("ix_episode_tags_key_value")

    op.drop_table("episode_tags")
    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upload_sessions_status"))
        batch_op.drop_index(batch_op.f("ix_upload_sessions_robot_id"))
        batch_op.drop_index(batch_op.f("ix_upload_sessions_episode_id"))

    op.drop_table("upload_sessions")
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_episodes_started_at"))
        batch_op.drop_index(batch_op.f("ix_episodes_robot_id"))
        batch_op.drop_index(batch_op.f("ix_episodes_has_actions"))
        batch_op.drop_index(batch_op.f("ix_episodes_embodiment_name"))
        batch_op.drop_index(batch_op.f("ix_episodes_committed_at"))

    op.drop_table("episodes")
    op.drop_table("robots")
    op.drop_table("embodiments")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))
        batch_op.drop_index(batch_op.f("ix_audit_log_action"))

    op.drop_table("audit_log")
