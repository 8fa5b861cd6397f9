"""Observed outcomes of allocated customers: validated upserts and paginated reads.

The HTTP endpoint and `dfcl outcomes import FILE` both end in `record`, so a campaign's outcomes
are checked the same way whichever path they arrive by: every id must belong to the allocation
(else nothing is written and the unknown ids are named), values must be finite, an id may appear
once per call. A second report for a customer replaces the first (upsert).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.core._types import FloatArray
from app.db import begin_write
from app.errors import InvalidInput, NotFound
from app.tables import Allocation, Decision, Outcome

COLUMNS = ("customer_id", "revenue", "cost")
_SHOWN = 10  # ids named in an error message
_CHUNK = 2_000  # rows per upsert statement (SQLite caps bound parameters per statement)


def _shown(ids: list[str]) -> str:
    return ", ".join(repr(i) for i in ids[:_SHOWN]) + (" ..." if len(ids) > _SHOWN else "")


@dataclass(frozen=True)
class Recorded:
    """What one `record` call did: rows written and the allocation's outcome count after it."""

    allocation_id: uuid.UUID
    n_written: int
    n_outcomes: int


@dataclass(frozen=True, slots=True)
class OutcomeView:
    """A stored outcome with the treatment, exploration flag and propensity of its decision."""

    customer_id: str
    revenue: float
    cost: float
    recorded_at: datetime
    treatment: int
    explored: bool
    propensity: float


@dataclass(frozen=True)
class OutcomePageView:
    """One page of an allocation's outcomes in request order, and how many it has in all."""

    allocation_id: uuid.UUID
    items: list[OutcomeView]
    offset: int
    next_offset: int | None  # None on the last page
    n_outcomes: int


def _check_values(customer_ids: list[str], revenue: FloatArray, cost: FloatArray) -> None:
    """Same lengths, finite numbers, each id once; errors name the customer."""
    if not customer_ids:
        raise InvalidInput("no outcomes given")
    if not (len(customer_ids) == len(revenue) == len(cost)):
        raise InvalidInput(
            f"{len(customer_ids)} ids but {len(revenue)} revenues and {len(cost)} costs"
        )
    for name, values in (("revenue", revenue), ("cost", cost)):
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise InvalidInput(
                f"{name} of customer {customer_ids[row]!r} (row {row}) is {values[row]!r}; "
                "outcomes must be finite numbers",
                customer_id=customer_ids[row],
            )
    repeated = [i for i, n in Counter(customer_ids).items() if n > 1]
    if repeated:
        raise InvalidInput(
            f"each customer may appear once per call; repeated: {_shown(repeated)}",
            repeated_customer_ids=repeated[:100],
        )


def _upsert(session: Session, rows: list[dict[str, object]]) -> None:
    """INSERT ... ON CONFLICT (allocation_id, customer_id) DO UPDATE, on SQLite and PostgreSQL."""
    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        pg = postgresql.insert(Outcome)
        stmt = pg.on_conflict_do_update(
            index_elements=[Outcome.allocation_id, Outcome.customer_id],
            set_={c: pg.excluded[c] for c in ("revenue", "cost", "recorded_at")},
        )
    elif dialect == "sqlite":
        lite = sqlite.insert(Outcome)
        stmt = lite.on_conflict_do_update(
            index_elements=[Outcome.allocation_id, Outcome.customer_id],
            set_={c: lite.excluded[c] for c in ("revenue", "cost", "recorded_at")},
        )
    else:
        raise NotImplementedError(f"outcome upsert supports SQLite and PostgreSQL, not {dialect}")
    for start in range(0, len(rows), _CHUNK):
        session.execute(stmt, rows[start : start + _CHUNK])


def record(
    session: Session,
    allocation_id: uuid.UUID,
    customer_ids: list[str],
    revenue: Sequence[float] | FloatArray,
    cost: Sequence[float] | FloatArray,
) -> Recorded:
    """Validate everything first, then upsert all rows; returns counts for the response."""
    revenue_values = np.asarray(revenue, dtype=np.float64)
    cost_values = np.asarray(cost, dtype=np.float64)
    _check_values(customer_ids, revenue_values, cost_values)
    if session.get(Allocation, allocation_id) is None:
        raise NotFound(f"allocation {allocation_id} does not exist")
    known: set[str] = set()
    for start in range(0, len(customer_ids), _CHUNK):  # only the ids given: a campaign-scale
        part = customer_ids[start : start + _CHUNK]  # allocation holds millions of decisions
        known.update(
            session.scalars(
                select(Decision.customer_id).where(
                    Decision.allocation_id == allocation_id, Decision.customer_id.in_(part)
                )
            )
        )
    given = pd.Index(customer_ids)
    unknown = given[~given.isin(list(known))].tolist()
    if unknown:
        raise InvalidInput(
            f"{len(unknown)} customer ids are not in allocation {allocation_id}: "
            f"{_shown(unknown)}; nothing was written",
            unknown_customer_ids=unknown[:100],
        )
    allocation = session.get(Allocation, allocation_id)
    if allocation is not None and allocation.campaign_id is not None:
        _fold_into_campaign(
            session, allocation.campaign_id, allocation_id, customer_ids, cost_values
        )
    now = datetime.now(UTC)
    rows = [
        {"allocation_id": allocation_id, "customer_id": i, "revenue": r, "cost": c,
         "recorded_at": now}
        for i, r, c in zip(customer_ids, revenue_values.tolist(), cost_values.tolist(), strict=True)
    ]  # fmt: skip
    begin_write(session)
    _upsert(session, rows)
    stored = session.scalar(
        select(func.count()).select_from(Outcome).where(Outcome.allocation_id == allocation_id)
    )
    return Recorded(allocation_id, len(rows), int(stored or 0))


def _fold_into_campaign(
    session: Session,
    campaign_id: uuid.UUID,
    allocation_id: uuid.UUID,
    customer_ids: list[str],
    cost: FloatArray,
) -> None:
    """Realized cost of a campaign's decisions updates its spend and calibration (same
    transaction as the outcomes; a repeated report replaces the earlier one)."""
    from app.services import campaigns  # campaigns imports allocations; keep this module light

    decided: list[Any] = []
    reported: list[Any] = []
    for start in range(0, len(customer_ids), _CHUNK):
        part = customer_ids[start : start + _CHUNK]
        decided += session.execute(
            select(Decision.customer_id, Decision.treatment, Decision.expected_cost).where(
                Decision.allocation_id == allocation_id, Decision.customer_id.in_(part)
            )
        ).all()
        reported += session.execute(
            select(Outcome.customer_id, Outcome.cost).where(
                Outcome.allocation_id == allocation_id, Outcome.customer_id.in_(part)
            )
        ).all()
    # align the fetched rows to the report's order by index (every id has a decision: checked)
    order = pd.Index(customer_ids)
    decisions = pd.DataFrame(decided, columns=["customer_id", "treatment", "expected_cost"])
    decisions = decisions.set_index("customer_id").reindex(order)
    earlier = pd.DataFrame(reported, columns=["customer_id", "cost"]).set_index("customer_id")
    before = earlier["cost"].reindex(order)
    campaigns.on_outcomes(
        session,
        campaign_id,
        decisions["treatment"].to_numpy(dtype=np.int64),
        decisions["expected_cost"].to_numpy(dtype=np.float64),
        cost,
        before.fillna(0.0).to_numpy(dtype=np.float64),
        before.notna().to_numpy(),
    )


def read_file(path: Path) -> tuple[list[str], FloatArray, FloatArray]:
    """A CSV/Parquet file with customer_id, revenue, cost -> validated columns.

    Raises ValueError naming the file, the column and the first bad row.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype={"customer_id": str})
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            raise ValueError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
    except ValueError:
        raise
    except Exception as exc:  # parsers raise many types; report them uniformly
        raise ValueError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column {missing[0]!r} (has {list(frame.columns)})")
    if frame.empty:
        raise ValueError(f"{path}: no rows")
    ids = frame["customer_id"]
    if ids.isna().any():
        raise ValueError(f"{path}: column 'customer_id' is empty at row {int(ids.isna().argmax())}")
    values = {}
    for name in ("revenue", "cost"):
        column = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(column)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"{path}: column {name!r} has a missing, non-numeric or infinite value "
                f"{frame[name].iloc[row]!r} at row {row} (customer {ids.iloc[row]!r})"
            )
        values[name] = column
    return ids.astype(str).tolist(), values["revenue"], values["cost"]


def list_page(
    session: Session, allocation_id: uuid.UUID, *, limit: int, offset: int
) -> OutcomePageView:
    """Outcomes of one allocation in request order, with each decision's treatment, or 404."""
    allocation = session.get(Allocation, allocation_id)
    if allocation is None:
        raise NotFound(f"allocation {allocation_id} does not exist")
    stmt = (
        select(Outcome, Decision.treatment, Decision.explored, Decision.propensity)
        .join(
            Decision,
            (Decision.allocation_id == Outcome.allocation_id)
            & (Decision.customer_id == Outcome.customer_id),
        )
        .where(Outcome.allocation_id == allocation_id)
        .order_by(Decision.position)
        .offset(offset)
        .limit(limit + 1)  # one extra row says "more exist"
    )
    rows = session.execute(stmt).all()
    items = [
        OutcomeView(o.customer_id, o.revenue, o.cost, o.recorded_at, t, e, p)
        for o, t, e, p in rows[:limit]
    ]
    total = session.scalar(
        select(func.count()).select_from(Outcome).where(Outcome.allocation_id == allocation_id)
    )
    next_offset = offset + limit if len(rows) > limit else None
    return OutcomePageView(allocation_id, items, offset, next_offset, int(total or 0))
