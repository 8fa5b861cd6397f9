"""Exploration (seed, rate, request features), observed outcomes, retraining jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 11:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # An allocation is reproducible from its seed, rate, model version and stored features.
    with op.batch_alter_table("allocations") as batch:
        batch.add_column(
            sa.Column("exploration_rate", sa.Double(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("seed", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("n_explored", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
    # Raw request features per decision, so stored decisions can become training rows.
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("features", sa.JSON(), nullable=True))

    op.create_table(
        "outcomes",
        sa.Column("allocation_id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("revenue", sa.Double(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["allocation_id", "customer_id"],
            ["decisions.allocation_id", "decisions.customer_id"],
            name=op.f("fk_outcomes_allocation_id_decisions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("allocation_id", "customer_id", name=op.f("pk_outcomes")),
    )

    op.create_table(
        "retrain_jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("in_progress", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("workdir", sa.String(length=4096), nullable=False),
        sa.Column("champion_version", sa.String(length=128), nullable=True),
        sa.Column("new_version", sa.String(length=128), nullable=True),
        sa.Column("activated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("comparison", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_jobs")),
    )
    op.create_index(op.f("ix_retrain_jobs_created_at"), "retrain_jobs", ["created_at"])
    # One job at a time, enforced by the database (partial unique index, as for active models).
    op.create_index(
        "uq_retrain_jobs_one_in_progress",
        "retrain_jobs",
        ["in_progress"],
        unique=True,
        sqlite_where=sa.text("in_progress"),
        postgresql_where=sa.text("in_progress"),
    )


def downgrade() -> None:
    op.drop_index("uq_retrain_jobs_one_in_progress", table_name="retrain_jobs")
    op.drop_index(op.f("ix_retrain_jobs_created_at"), table_name="retrain_jobs")
    op.drop_table("retrain_jobs")
    op.drop_table("outcomes")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("features")
    with op.batch_alter_table("allocations") as batch:
        batch.drop_column("n_explored")
        batch.drop_column("seed")
        batch.drop_column("exploration_rate")
