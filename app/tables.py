"""ORM tables: registered model versions, allocations and their per-customer decisions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime


class ModelVersion(Base):
    """A model copied into models/<version>/; at most one row is active."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    treatments: Mapped[list[str]] = mapped_column(JSON)
    n_features: Mapped[int] = mapped_column(Integer)
    onnx_sha256: Mapped[str] = mapped_column(String(64))
    card: Mapped[dict[str, Any]] = mapped_column(JSON)  # the whole model.json
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))

    __table_args__ = (
        # The database, not only the code, guarantees a single active version.
        Index(
            "uq_model_versions_one_active",
            "is_active",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )


class Allocation(Base):
    """One solved request: budget, model, multiplier and expected totals."""

    __tablename__ = "allocations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    campaign: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    model_version: Mapped[str] = mapped_column(
        String(128), ForeignKey("model_versions.version"), index=True
    )
    budget: Mapped[float] = mapped_column(Double)  # as requested (total or per customer)
    per_capita: Mapped[bool] = mapped_column(Boolean)
    budget_total: Mapped[float] = mapped_column(Double)  # total budget the solver used
    multiplier: Mapped[float] = mapped_column(Double)  # lambda, shadow price of cost
    n_customers: Mapped[int] = mapped_column(Integer)
    expected_revenue: Mapped[float] = mapped_column(Double)
    expected_cost: Mapped[float] = mapped_column(Double)


class Decision(Base):
    """The treatment one customer got in one allocation, with the model's expectations."""

    __tablename__ = "decisions"

    allocation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("allocations.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)  # row in the request
    customer_id: Mapped[str] = mapped_column(String(128))
    treatment: Mapped[int] = mapped_column(Integer)
    expected_revenue: Mapped[float] = mapped_column(Double)
    expected_cost: Mapped[float] = mapped_column(Double)
    # Probability that the service chose this treatment; 1 while allocation is deterministic.
    propensity: Mapped[float] = mapped_column(Double, default=1.0, server_default=text("1.0"))
    explored: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))

    __table_args__ = (UniqueConstraint("allocation_id", "customer_id"),)
