"""Budget what-if: expected revenue and cost of the optimal allocation over a grid of budgets.

One model call for the customers, then one solve per budget on the cached predictions (the
solver is ~ms per 10k customers, so a grid of up to 200 points stays well under a second).
Nothing is stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.solver import InfeasibleBudget, allocate
from app.registry import Registry
from app.schemas import BudgetCurveCreate
from app.services.allocations import predict_customers


def curve(
    session: Session, registry: Registry, body: BudgetCurveCreate, *, max_customers: int
) -> dict[str, Any]:
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
    points = []
    for budget in budgets.tolist():  # loop over the grid; each solve is vectorised
        total = budget * scale
        try:
            solution = allocate(revenue, cost, total)
        except InfeasibleBudget:
            points.append(
                {"budget": budget, "budget_total": total, "feasible": False,
                 "expected_revenue": None, "expected_cost": None, "multiplier": None}
            )  # fmt: skip
            continue
        points.append(
            {"budget": budget, "budget_total": total, "feasible": True,
             "expected_revenue": solution.revenue, "expected_cost": solution.cost,
             "multiplier": solution.lam}
        )  # fmt: skip
    return {
        "model_version": model.version,
        "n_customers": n_customers,
        "per_capita": body.per_capita,
        "min_budget": min_budget,
        "max_useful_budget": max_useful,
        "points": points,
    }
