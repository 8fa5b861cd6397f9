"""Campaign-scale allocation: one budget across a customer file of any size (CONTRACT STUB).

The body is being written; the names and signatures below are the contract other modules
(REST job, CLI, Ray engine, benchmarks) code against.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidInput

Phase = Literal["queued", "reading", "solving", "writing", "storing", "done"]


@dataclass(frozen=True)
class BatchRequest:
    """What to allocate: a customer table (file or directory of .parquet / .csv) and a budget."""

    source: Path
    budget: float
    per_capita: bool = False
    model_version: str | None = None  # None: the active model
    campaign: str | None = None
    exploration_rate: float = 0.0
    seed: int | None = None  # None with exploration: a fresh seed (stored)
    id_column: str = "customer_id"
    engine: Literal["local", "ray"] = "local"


@dataclass(frozen=True)
class Progress:
    """Where a running job is; `fraction` is an overall 0..1 estimate."""

    phase: Phase
    rows_read: int
    rows_scored: int
    fraction: float


@dataclass(frozen=True)
class BatchResult:
    """A finished job: the allocation it stored (if any) and where its decisions are."""

    allocation_id: uuid.UUID | None  # None when not stored
    model_version: str
    n_customers: int
    n_explored: int
    seed: int | None
    lam: float
    revenue: float  # total predicted revenue of the decisions
    cost: float  # total predicted cost (<= budget_total)
    budget_total: float
    decisions_path: Path  # Parquet: position, customer_id, treatment, treatment_name, ...
    timings_s: dict[str, float] = field(default_factory=dict)  # per phase


class BatchInputError(InvalidInput):
    """The customer table cannot be allocated; the message names the column and first bad row."""


class JobCancelled(Exception):
    """`cancelled()` said stop; nothing was stored."""


def run_batch(
    request: BatchRequest,
    *,
    settings: Settings,
    workdir: Path,
    store: bool,
    on_progress: Callable[[Progress], None] = lambda p: None,
    cancelled: Callable[[], bool] = lambda: False,
    on_commit: Callable[[Session, uuid.UUID], None] | None = None,
) -> BatchResult:
    """Read, validate, score, solve exactly, write decisions Parquet under `workdir`, store.

    With `store`, the allocation and all its decisions are inserted in ONE transaction on
    settings.database_url; `on_commit(session, allocation_id)` runs inside it just before the
    commit (the REST job marks its row succeeded there, atomically). Raises BatchInputError
    (before anything is stored), InfeasibleBudget / ExplorationInfeasible, JobCancelled.
    """
    raise NotImplementedError
