"""Budget what-if: expected revenue and cost of the optimal allocation over a grid of budgets.

One model call for the customers, then one solve per budget on the cached predictions (the
solver is ~ms per 10k customers, so a grid of up to 200 points stays well under a second).
Nothing is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from app.core.solver import InfeasibleBudget, allocate
from app.registry import Registry
from app.schemas import BudgetCurveCreate
from app.services.allocations import predict_customers


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """What one budget buys; the totals and multiplier are None when it is infeasible."""

    budget: float  # as requested (total, or per customer if per_capita)
    budget_total: float
    feasible: bool
    expected_revenue: float | None
    expected_cost: float | None
    multiplier: float | None


@dataclass(frozen=True)
class BudgetWhatIf:
    """The points of one what-if, with the budgets between which they are worth looking at."""

    model_version: str
    n_customers: int
    per_capita: bool
    min_budget: float  # everyone's cheapest treatment
    max_useful_budget: float  # everyone's best treatment: more budget buys nothing
    points: list[CurvePoint]


def _point(revenue: np.ndarray, cost: np.ndarray, budget: float, total: float) -> CurvePoint:
    """Solve at one total budget; below the cheapest assignment the point is infeasible."""
    try:
        solution = allocate(revenue, cost, total)
    except InfeasibleBudget:
        return CurvePoint(budget, total, False, None, None, None)
    return CurvePoint(budget, total, True, solution.revenue, solution.cost, solution.lam)


def curve(
    session: Session, registry: Registry, body: BudgetCurveCreate, *, max_customers: int
) -> BudgetWhatIf:
    """Predict once, solve at every budget; points in the order of the requested budgets."""
    n_customers = len(body.customers)
    predicted = predict_customers(
        session, registry, body.customers, body.model_version, max_customers=max_customers
    )
    model, revenue, cost = predicted.model, predicted.revenue, predicted.cost
    min_budget = float(cost.min(axis=1).sum())
    # Everyone on the best-revenue arm (the solver's unconstrained answer): the useful maximum.
    max_useful = float(allocate(revenue, cost, max(float(cost.max(axis=1).sum()), 0.0)).cost)
    scale = n_customers if body.per_capita else 1
    if body.budgets is not None:
        budgets = np.asarray(body.budgets, dtype=np.float64)
    else:
        budgets = np.linspace(min_budget, max(max_useful, min_budget), body.n_budgets) / scale
    # One solve per budget of the grid; each solve is vectorised.
    points = [_point(revenue, cost, budget, budget * scale) for budget in budgets.tolist()]
    return BudgetWhatIf(model.version, n_customers, body.per_capita, min_budget, max_useful, points)
