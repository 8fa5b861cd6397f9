"""ORM tables: registered model versions, allocations and their per-customer decisions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
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
    # Exploration: share of customers given a uniformly random treatment, and the seed of this
    # allocation's draw, so it can be reproduced from the stored features.
    exploration_rate: Mapped[float] = mapped_column(Double, default=0.0, server_default=text("0"))
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    n_explored: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Set when the allocation is one decision batch of a campaign (/v1/campaigns).
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("campaigns.id", ondelete="SET NULL"), index=True, nullable=True
    )


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
    # Raw request features, so a decision joined with its outcome becomes a training row.
    features: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (UniqueConstraint("allocation_id", "customer_id"),)


class Outcome(Base):
    """Observed revenue and cost of one customer of one allocation (upserted)."""

    __tablename__ = "outcomes"

    allocation_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    revenue: Mapped[float] = mapped_column(Double)
    cost: Mapped[float] = mapped_column(Double)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # Only customers of that allocation can have an outcome.
        ForeignKeyConstraint(
            ["allocation_id", "customer_id"],
            ["decisions.allocation_id", "decisions.customer_id"],
            ondelete="CASCADE",
        ),
    )


class RetrainJob(Base):
    """A background retraining run: its parameters, progress and champion/challenger result."""

    __tablename__ = "retrain_jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed
    # True while queued or running; a partial unique index allows one such row.
    in_progress: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the job's process
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # the request, as accepted
    workdir: Mapped[str] = mapped_column(String(4096))  # data, model and job.log
    champion_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    new_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    activated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # rows, sha256
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    comparison: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index(
            "uq_retrain_jobs_one_in_progress",
            "in_progress",
            unique=True,
            sqlite_where=text("in_progress"),
            postgresql_where=text("in_progress"),
        ),
    )


class ApiKey(Base):
    """A client credential: only the SHA-256 of the key is stored, with its scopes."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a key
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class IdempotencyRecord(Base):
    """The response a client's Idempotency-Key produced, written in the same transaction."""

    __tablename__ = "idempotency_records"

    principal: Mapped[str] = mapped_column(String(64), primary_key=True)  # API key id
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))  # method, path and canonical body
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(Text)  # the JSON body sent
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AllocationJob(Base):
    """A campaign-scale allocation run in its own process: request, progress and result.

    The job marks itself succeeded in the transaction that stores its allocation, so a job
    reads succeeded exactly when its allocation and decisions are visible.
    """

    __tablename__ = "allocation_jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # queued | running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the job's process
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # the request, as accepted
    workdir: Mapped[str] = mapped_column(String(4096))  # scratch, decisions.parquet, job.log
    phase: Mapped[str] = mapped_column(String(16), default="queued")
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    rows_scored: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    progress: Mapped[float] = mapped_column(Double, default=0.0, server_default=text("0"))
    # Cleared (SET NULL) if the allocation is deleted; the job row stays as history.
    allocation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("allocations.id", ondelete="SET NULL"), nullable=True
    )
    n_customers: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Multiplier, totals, exploration draw and per-phase timings, once succeeded.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )


class Campaign(Base):
    """A budget spent over time by real-time decisions; its pacing state lives in this row."""

    __tablename__ = "campaigns"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16))  # active | paused | finished
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    budget: Mapped[float] = mapped_column(Double)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expected_customers: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    model_version: Mapped[str] = mapped_column(String(128), ForeignKey("model_versions.version"))
    exploration_rate: Mapped[float] = mapped_column(Double)
    seed: Mapped[int] = mapped_column(BigInteger)
    pacing: Mapped[str] = mapped_column(String(16))
    plan_source: Mapped[str] = mapped_column(String(16))  # multiplier | sample | seen
    plan_multiplier: Mapped[float | None] = mapped_column(Double, nullable=True)
    multiplier: Mapped[float | None] = mapped_column(Double, nullable=True)
    n_decisions: Mapped[int] = mapped_column(BigInteger)
    n_stopped: Mapped[int] = mapped_column(BigInteger)  # got the cheapest arm: budget exhausted
    # Calibrated cost of every decided customer's cheapest arm: the mean sets the reserve kept
    # for customers still expected (app/core/pacing.py, hard stop).
    cheapest_cost: Mapped[float] = mapped_column(Double)
    # Per-arm cost aggregates (app/core/pacing.py ArmSpend): field -> K numbers.
    arms: Mapped[dict[str, Any]] = mapped_column(JSON)
    last_history_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class CampaignHistory(Base):
    """A point of a campaign's multiplier and spend over time (at most one per second)."""

    __tablename__ = "campaign_history"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    campaign_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    multiplier: Mapped[float | None] = mapped_column(Double, nullable=True)
    committed: Mapped[float] = mapped_column(Double)
    realized: Mapped[float] = mapped_column(Double)
    predicted: Mapped[float] = mapped_column(Double)
    n_decisions: Mapped[int] = mapped_column(BigInteger)
    budget: Mapped[float] = mapped_column(Double)
