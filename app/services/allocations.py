"""Allocation use cases: encode -> predict -> solve -> store, and reading stored allocations."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from app.core.features import FeatureError
from app.db import begin_write
from app.errors import InvalidInput, ModelOutputInvalid, NotFound, TooManyCustomers
from app.inference import OnnxModel
from app.registry import Registry
from app.schemas import AllocationCreate, CustomerIn
from app.services import models
from app.services.decision_rows import decision_batch, insert_decisions
from app.services.exploration import allocate_with_exploration, new_seed
from app.tables import Allocation, Decision, ModelVersion

_ROW = re.compile(r"\brow (\d+)\b")


@dataclass(frozen=True, slots=True)
class DecisionView:
    """The treatment chosen for one customer, by name too, and what the model expects of it."""

    customer_id: str
    treatment: int
    treatment_name: str
    expected_revenue: float
    expected_cost: float
    propensity: float
    explored: bool


@dataclass(frozen=True)
class AllocationWithDecisions:
    """A stored allocation with one page of its decisions, in request order."""

    allocation: Allocation
    decisions: list[DecisionView]
    offset: int
    next_offset: int | None  # None on the last page


@dataclass(frozen=True)
class Created:
    """A stored allocation with all its decisions, and where the time went (ms per stage)."""

    result: AllocationWithDecisions
    timings_ms: dict[str, float]


def _encode(model: OnnxModel, customers: list[CustomerIn]) -> np.ndarray:
    """Request rows -> float32 (N, F) with the model's own spec; errors name the customer."""
    try:
        return model.spec.encode_records([c.features for c in customers])
    except FeatureError as exc:
        # The contract puts the first bad row in the message ("... row 17 ..."), not an attribute.
        found = _ROW.search(str(exc))
        row = getattr(exc, "row", None) or (int(found.group(1)) if found else None)
        if not isinstance(row, int) or row >= len(customers):
            raise InvalidInput(f"features: {exc}") from None
        customer = customers[row].id
        raise InvalidInput(
            f"customer {customer!r} (customers[{row}]): {exc}", customer_id=customer
        ) from None


@dataclass(frozen=True)
class Predicted:
    """Model outputs for the customers of one request, with the stage times (ms)."""

    model: OnnxModel
    revenue: np.ndarray  # (N, K)
    cost: np.ndarray  # (N, K)
    encode_ms: float
    infer_ms: float


def predict_customers(
    session: Session,
    registry: Registry,
    customers: list[CustomerIn],
    model_version: str | None,
    *,
    max_customers: int,
) -> Predicted:
    """Size check, model choice, encoding and one model call: shared by every endpoint that
    scores customers, so they all refuse and report alike."""
    n_customers = len(customers)
    if n_customers > max_customers:
        raise TooManyCustomers(
            f"{n_customers} customers in one request; the limit is {max_customers} "
            "(DFCL_MAX_CUSTOMERS): split the request"
        )
    return score_customers(models.resolve(session, registry, model_version), customers)


def score_customers(model: OnnxModel, customers: list[CustomerIn]) -> Predicted:
    """Encoding and one model call for a known model; refuses non-finite predictions."""
    # Only the model's own features are kept, and so stored with the decisions (for
    # retraining): other keys a client sends are dropped here, whatever their number.
    keep = model.spec.raw_columns
    for customer in customers:
        customer.features = {k: customer.features[k] for k in keep if k in customer.features}
    t0 = perf_counter()
    features = _encode(model, customers)  # (N, F)
    t1 = perf_counter()
    revenue, cost = model.predict(features)  # (N, K) each
    t2 = perf_counter()
    if not (np.isfinite(revenue).all() and np.isfinite(cost).all()):
        bad = int(np.argmin(np.isfinite(revenue).all(axis=1) & np.isfinite(cost).all(axis=1)))
        raise ModelOutputInvalid(
            f"model {model.version} predicted a non-finite value for customer {customers[bad].id!r}"
        )
    return Predicted(model, revenue, cost, (t1 - t0) * 1e3, (t2 - t1) * 1e3)


def create(
    session: Session,
    registry: Registry,
    body: AllocationCreate,
    *,
    max_customers: int,
    exploration_rate: float = 0.0,
) -> Created:
    """Choose one treatment per customer within the budget and store all of it in one go.

    `exploration_rate` is the default when the body does not set one (services/exploration.py).
    """
    n_customers = len(body.customers)
    predicted = predict_customers(
        session, registry, body.customers, body.model_version, max_customers=max_customers
    )
    model, revenue, cost = predicted.model, predicted.revenue, predicted.cost
    t2 = perf_counter()
    rate = body.exploration_rate if body.exploration_rate is not None else exploration_rate
    seed = (body.seed if body.seed is not None else new_seed()) if rate > 0 else None
    total_budget = body.budget * (n_customers if body.per_capita else 1)
    solution = allocate_with_exploration(revenue, cost, total_budget, rate, seed or 0)
    t3 = perf_counter()
    rows = np.arange(n_customers)
    treatment = solution.treatment
    chosen_revenue = revenue[rows, treatment]  # (N,)
    chosen_cost = cost[rows, treatment]  # (N,)

    allocation = Allocation(
        id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        campaign=body.campaign,
        model_version=model.version,
        budget=body.budget,
        per_capita=body.per_capita,
        budget_total=float(solution.budget),
        multiplier=float(solution.lam),
        n_customers=n_customers,
        expected_revenue=float(solution.revenue),
        expected_cost=float(solution.cost),
        exploration_rate=rate,
        seed=seed,
        n_explored=int(solution.explored.sum()),
    )
    # Response first, writes last: the write transaction (SQLite: the write lock) stays short.
    ids = [c.id for c in body.customers]
    columns = (
        ids,
        treatment.tolist(),
        chosen_revenue.tolist(),
        chosen_cost.tolist(),
        solution.propensity.tolist(),
        solution.explored.tolist(),
    )
    names = model.treatments
    decisions = [
        DecisionView(customer_id, t, names[t], r, c, p, e)
        for customer_id, t, r, c, p, e in zip(*columns, strict=True)
    ]
    t4 = perf_counter()
    begin_write(session)
    session.add(allocation)
    session.flush()
    batch = decision_batch(
        ids,
        treatment,
        chosen_revenue,
        chosen_cost,
        solution.propensity,
        solution.explored,
        [c.features for c in body.customers],
    )
    insert_decisions(session, allocation.id, [batch])
    t5 = perf_counter()
    timings = {
        "encode": predicted.encode_ms,
        "infer": predicted.infer_ms,
        "solve": (t3 - t2) * 1e3,
        "respond": (t4 - t3) * 1e3,
        "db": (t5 - t4) * 1e3,
    }
    return Created(AllocationWithDecisions(allocation, decisions, 0, None), timings)


def get(
    session: Session, allocation_id: uuid.UUID, *, limit: int, offset: int
) -> AllocationWithDecisions:
    """One stored allocation with decisions[offset:offset+limit] in request order, or 404."""
    allocation = session.get(Allocation, allocation_id)
    if allocation is None:
        raise NotFound(f"allocation {allocation_id} does not exist")
    version = session.get(ModelVersion, allocation.model_version)
    names = version.treatments if version is not None else []
    stmt = (
        select(Decision)
        .options(defer(Decision.features))  # kept for retraining, not shown
        .where(Decision.allocation_id == allocation_id)
        .order_by(Decision.position)
        .offset(offset)
        .limit(limit)
    )
    decisions = [
        DecisionView(
            d.customer_id,
            d.treatment,
            names[d.treatment] if d.treatment < len(names) else str(d.treatment),
            d.expected_revenue,
            d.expected_cost,
            d.propensity,
            d.explored,
        )
        for d in session.scalars(stmt)
    ]
    end = offset + len(decisions)
    next_offset = end if end < allocation.n_customers else None
    return AllocationWithDecisions(allocation, decisions, offset, next_offset)


def list_page(
    session: Session,
    *,
    campaign: str | None,
    model_version: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[Allocation], int | None]:
    """Allocations matching the filters, newest first; returns the page and the next offset."""
    stmt = select(Allocation)
    if campaign is not None:
        stmt = stmt.where(Allocation.campaign == campaign)
    if model_version is not None:
        stmt = stmt.where(Allocation.model_version == model_version)
    if created_after is not None:
        stmt = stmt.where(Allocation.created_at >= created_after)
    if created_before is not None:
        stmt = stmt.where(Allocation.created_at < created_before)
    stmt = stmt.order_by(Allocation.created_at.desc(), Allocation.id).offset(offset)
    rows = list(session.scalars(stmt.limit(limit + 1)))  # one extra row says "more exist"
    more = len(rows) > limit
    return rows[:limit], (offset + limit if more else None)
