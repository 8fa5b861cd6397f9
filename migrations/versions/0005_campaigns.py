"""Campaigns: budgets spent over time by paced real-time decisions (/v1/campaigns).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:21:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("budget", sa.Double(), nullable=False),
        sa.Column("start_at", TS, nullable=False),
        sa.Column("end_at", TS, nullable=True),
        sa.Column("expected_customers", sa.BigInteger(), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("exploration_rate", sa.Double(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("pacing", sa.String(length=16), nullable=False),
        sa.Column("plan_source", sa.String(length=16), nullable=False),
        sa.Column("plan_multiplier", sa.Double(), nullable=True),
        sa.Column("multiplier", sa.Double(), nullable=True),
        sa.Column("n_decisions", sa.BigInteger(), nullable=False),
        sa.Column("n_stopped", sa.BigInteger(), nullable=False),
        sa.Column("cheapest_cost", sa.Double(), nullable=False),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("last_history_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version"],
            ["model_versions.version"],
            name=op.f("fk_campaigns_model_version_model_versions"),
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    op.create_index(op.f("ix_campaigns_created_at"), "campaigns", ["created_at"])
    op.create_index(op.f("ix_campaigns_name"), "campaigns", ["name"])
    op.create_table(
        "campaign_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("campaign_id", sa.Uuid(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("multiplier", sa.Double(), nullable=True),
        sa.Column("committed", sa.Double(), nullable=False),
        sa.Column("realized", sa.Double(), nullable=False),
        sa.Column("predicted", sa.Double(), nullable=False),
        sa.Column("n_decisions", sa.BigInteger(), nullable=False),
        sa.Column("budget", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_history_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_history")),
    )
    op.create_index(op.f("ix_campaign_history_campaign_id"), "campaign_history", ["campaign_id"])
    with op.batch_alter_table("allocations") as batch:
        batch.add_column(sa.Column("campaign_id", sa.Uuid(), nullable=True))
        batch.create_index(op.f("ix_allocations_campaign_id"), ["campaign_id"])
        batch.create_foreign_key(
            op.f("fk_allocations_campaign_id_campaigns"), "campaigns", ["campaign_id"], ["id"],
            ondelete="SET NULL",
        )  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table("allocations") as batch:
        batch.drop_constraint(op.f("fk_allocations_campaign_id_campaigns"), type_="foreignkey")
        batch.drop_index(op.f("ix_allocations_campaign_id"))
        batch.drop_column("campaign_id")
    op.drop_index(op.f("ix_campaign_history_campaign_id"), table_name="campaign_history")
    op.drop_table("campaign_history")
    op.drop_index(op.f("ix_campaigns_name"), table_name="campaigns")
    op.drop_index(op.f("ix_campaigns_created_at"), table_name="campaigns")
    op.drop_table("campaigns")
