"""episode search indexes: (filter, episode_id) per equality filter, trigram on the instruction

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 09:00:00

At 100,000 episodes a filter whose value is rare (or absent) made PostgreSQL walk the whole
primary key for one page, and a substring of the instruction read every row
(benchmarks/catalog.py, docs/architecture.md). The trigram index is PostgreSQL's (pg_trgm, a
trusted extension the database owner may create); on SQLite, the single-machine default, the
same index is a plain one and the substring search keeps scanning.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FILTERS = ("robot_id", "embodiment_name", "source", "site", "policy_version", "success", "has_actions")
REPLACED = ("robot_id", "embodiment_name", "has_actions")  # single-column: the composites lead with them
TRIGRAM = "ix_episodes_task_trgm"


def upgrade() -> None:
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        for column in REPLACED:
            batch_op.drop_index(f"ix_episodes_{column}")
        for column in FILTERS:
            batch_op.create_index(f"ix_episodes_{column}_episode_id", [column, "episode_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(f"CREATE INDEX {TRIGRAM} ON episodes USING gin (lower(task) gin_trgm_ops)")
    else:
        op.execute(f"CREATE INDEX {TRIGRAM} ON episodes (lower(task))")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {TRIGRAM}")
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        for column in FILTERS:
            batch_op.drop_index(f"ix_episodes_{column}_episode_id")
        for column in REPLACED:
            batch_op.create_index(f"ix_episodes_{column}", [column], unique=False)
