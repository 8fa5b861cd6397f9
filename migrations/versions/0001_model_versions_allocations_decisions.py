"""Model registry, allocations and their decisions.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 11:06:45
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("treatments", sa.JSON(), nullable=False),
        sa.Column("n_features", sa.Integer(), nullable=False),
        sa.Column("onnx_sha256", sa.String(length=64), nullable=False),
        sa.Column("card", sa.JSON(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
    )
    # At most one active version, enforced by the database (partial unique index).
    op.create_index(
        "uq_model_versions_one_active",
        "model_versions",
        ["is_active"],
        unique=True,
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    )

    op.create_table(
        "allocations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign", sa.String(length=128), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("budget", sa.Double(), nullable=False),
        sa.Column("per_capita", sa.Boolean(), nullable=False),
        sa.Column("budget_total", sa.Double(), nullable=False),
        sa.Column("multiplier", sa.Double(), nullable=False),
        sa.Column("n_customers", sa.Integer(), nullable=False),
        sa.Column("expected_revenue", sa.Double(), nullable=False),
        sa.Column("expected_cost", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version"],
            ["model_versions.version"],
            name=op.f("fk_allocations_model_version_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocations")),
    )
    op.create_index(op.f("ix_allocations_campaign"), "allocations", ["campaign"])
    op.create_index(op.f("ix_allocations_created_at"), "allocations", ["created_at"])
    op.create_index(op.f("ix_allocations_model_version"), "allocations", ["model_version"])

    op.create_table(
        "decisions",
        sa.Column("allocation_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("treatment", sa.Integer(), nullable=False),
        sa.Column("expected_revenue", sa.Double(), nullable=False),
        sa.Column("expected_cost", sa.Double(), nullable=False),
        sa.Column("propensity", sa.Double(), server_default=sa.text("1.0"), nullable=False),
        sa.Column("explored", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.ForeignKeyConstraint(
            ["allocation_id"],
            ["allocations.id"],
            name=op.f("fk_decisions_allocation_id_allocations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("allocation_id", "position", name=op.f("pk_decisions")),
        sa.UniqueConstraint(
            "allocation_id", "customer_id", name=op.f("uq_decisions_allocation_id_customer_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("decisions")
    op.drop_index(op.f("ix_allocations_model_version"), table_name="allocations")
    op.drop_index(op.f("ix_allocations_created_at"), table_name="allocations")
    op.drop_index(op.f("ix_allocations_campaign"), table_name="allocations")
    op.drop_table("allocations")
    op.drop_index("uq_model_versions_one_active", table_name="model_versions")
    op.drop_table("model_versions")
