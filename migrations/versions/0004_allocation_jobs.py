"""Campaign-scale allocation jobs (POST /v1/allocation-jobs).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "allocation_jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("workdir", sa.String(length=4096), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("rows_read", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("rows_scored", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("progress", sa.Double(), server_default=sa.text("0"), nullable=False),
        sa.Column("allocation_id", sa.Uuid(), nullable=True),
        sa.Column("n_customers", sa.BigInteger(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "cancel_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        # The job row outlives its allocation (history); deleting the allocation clears the link.
        sa.ForeignKeyConstraint(
            ["allocation_id"],
            ["allocations.id"],
            name=op.f("fk_allocation_jobs_allocation_id_allocations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocation_jobs")),
    )
    op.create_index(op.f("ix_allocation_jobs_created_at"), "allocation_jobs", ["created_at"])
    # Every read looks for jobs in progress (dead-process check).
    op.create_index(op.f("ix_allocation_jobs_status"), "allocation_jobs", ["status"])


def downgrade() -> None:
    op.drop_index(op.f("ix_allocation_jobs_status"), table_name="allocation_jobs")
    op.drop_index(op.f("ix_allocation_jobs_created_at"), table_name="allocation_jobs")
    op.drop_table("allocation_jobs")
