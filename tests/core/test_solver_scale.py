"""Solver at scale: 10,000 random instances of varied size and cost structure, 0 budget overruns.

The instances are drawn in one vectorised pass (flat arrays cut into (N, K) blocks); each family
stresses a different corner: zero costs, costs equal across treatments, treatment 0 not the
cheapest, negative revenue, integer costs full of ties, a huge dynamic range, some negative costs,
and budgets at, below and above the feasible range.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.core.solver import InfeasibleBudget, allocate

N_INSTANCES = 10_000
FAMILIES = (
    "uniform",
    "zero_cost",
    "equal_cost",
    "control_dearest",
    "negative_revenue",
    "integer_ties",
    "wide_range",
    "some_negative_cost",
)


def _instances(seed: int) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(family, revenue (N, K), cost (N, K), budget) for N_INSTANCES instances."""
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(0, np.log(300), N_INSTANCES)).astype(np.int64)  # 1..299, log-uniform
    k = rng.integers(1, 9, N_INSTANCES)
    family = rng.integers(0, len(FAMILIES), N_INSTANCES)
    sizes = n * k
    ends = np.cumsum(sizes)
    total = int(ends[-1])
    u_rev, u_cost = rng.normal(0, 1, total), rng.uniform(0, 1, total)  # (sum N*K,) each
    ints = rng.integers(0, 3, total)
    budget_u = rng.uniform(-0.1, 1.2, N_INSTANCES)  # position in [min cost, max cost]
    budget_u[rng.uniform(size=N_INSTANCES) < 0.05] = 0.0  # exactly the cheapest assignment
    budget_u[rng.uniform(size=N_INSTANCES) < 0.05] = 1.0  # exactly the dearest assignment
    out = []
    for i, (start, stop) in enumerate(zip(ends - sizes, ends, strict=True)):
        shape = (int(n[i]), int(k[i]))
        revenue = u_rev[start:stop].reshape(shape) + 1.0
        cost = u_cost[start:stop].reshape(shape) * 2.0
        name = FAMILIES[family[i]]
        if name == "zero_cost":
            cost = np.zeros(shape)
        elif name == "equal_cost":
            cost = np.repeat(cost[:, :1], shape[1], axis=1)
        elif name == "control_dearest":
            cost[:, 0] = cost.max(axis=1) + 0.5
        elif name == "negative_revenue":
            revenue = -np.abs(revenue)
        elif name == "integer_ties":
            cost = ints[start:stop].reshape(shape).astype(np.float64)
            revenue = np.round(revenue)
        elif name == "wide_range":
            cost = 10.0 ** (u_cost[start:stop].reshape(shape) * 12 - 6)
        elif name == "some_negative_cost":
            cost = cost - 0.5
        low, high = cost.min(axis=1).sum(), cost.max(axis=1).sum()
        budget = low + budget_u[i] * (high - low)
        out.append((name, revenue, cost, float(max(budget, 0.0))))
    return out


@pytest.mark.slow
def test_ten_thousand_random_instances_never_overrun_the_budget() -> None:
    overruns, infeasible_wrong, solved = [], [], 0
    by_family = dict.fromkeys(FAMILIES, 0)
    for i, (name, revenue, cost, budget) in enumerate(_instances(seed=20261125)):
        rows = np.arange(revenue.shape[0])
        cheapest = float(cost.min(axis=1).sum())
        try:
            if i % 10 == 0:  # the per-capita path: about the same total, given per customer
                per_customer = budget / rows.size
                budget = per_customer * rows.size  # the total the solver uses
                result = allocate(revenue, cost, per_customer, per_capita=True)
            else:
                result = allocate(revenue, cost, budget)
        except InfeasibleBudget as exc:
            # Refused only when even the cheapest assignment costs more than the budget.
            if not cheapest > budget or not np.isclose(exc.min_budget, cheapest):
                infeasible_wrong.append((name, revenue.shape, budget, cheapest, exc.min_budget))
            continue
        solved += 1
        by_family[name] += 1
        spent = float(np.sum(cost[rows, result.treatment]))  # recomputed, not trusted
        slack = 1e-9 * (abs(budget) + float(np.abs(cost).sum()))
        if spent > budget + slack or result.cost > budget + slack:
            overruns.append((name, revenue.shape, budget, spent, result.cost))
        assert result.treatment.shape == rows.shape
        assert np.isclose(result.revenue, np.sum(revenue[rows, result.treatment]), atol=1e-6)
    assert not overruns, f"{len(overruns)} overruns, e.g. {overruns[:3]}"
    assert not infeasible_wrong, infeasible_wrong[:3]
    assert solved > 0.9 * N_INSTANCES  # budgets below the cheapest are ~8% of instances
    assert all(count > 0.8 * solved / len(FAMILIES) for count in by_family.values()), by_family
