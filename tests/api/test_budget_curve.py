"""Budget what-if: one model call, one solve per budget, identical to POST /v1/allocations."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi.testclient import TestClient


def test_curve_is_monotone_and_matches_allocations(client: TestClient, customers: Any) -> None:
    people = customers(120, seed=4)
    r = client.post("/v1/budget-curve", json={"customers": people, "n_budgets": 12})
    assert r.status_code == 200, r.text
    out = r.json()
    points = out["points"]
    assert out["model_version"] == "tiny-v1" and out["n_customers"] == 120 and len(points) == 12
    assert (
        points[0]["budget"] == out["min_budget"]
        and points[-1]["budget"] == out["max_useful_budget"]
    )
    assert all(p["feasible"] for p in points)
    revenue = np.array([p["expected_revenue"] for p in points])
    cost = np.array([p["expected_cost"] for p in points])
    budgets = np.array([p["budget_total"] for p in points])
    assert (np.diff(revenue) >= -1e-9).all() and (cost <= budgets * (1 + 1e-12)).all()
    assert (np.diff([p["multiplier"] for p in points]) <= 1e-12).all()  # shadow price falls
    for p in points[1::4]:  # the stored allocation at that budget agrees exactly
        a = client.post("/v1/allocations", json={"budget": p["budget"], "customers": people}).json()
        assert a["expected_revenue"] == p["expected_revenue"]
        assert a["expected_cost"] == p["expected_cost"]
        assert a["multiplier"] == p["multiplier"]


def test_requested_budgets_per_capita_and_infeasible_points(
    client: TestClient, customers: Any
) -> None:
    people = customers(50, seed=5)
    grid = [0.01, 0.5, 1.0, 2.0, 1.0]
    r = client.post(
        "/v1/budget-curve", json={"customers": people, "budgets": grid, "per_capita": True}
    )
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    assert [p["budget"] for p in points] == grid  # request order kept
    assert [p["budget_total"] for p in points] == [b * 50 for b in grid]
    assert points[0]["feasible"] is False and points[0]["expected_revenue"] is None
    assert points[2] == points[4]
    a = client.post(
        "/v1/allocations", json={"budget": 2.0, "per_capita": True, "customers": people}
    ).json()
    assert a["expected_revenue"] == points[3]["expected_revenue"]
    # Nothing was stored by the curve requests: only the one allocation exists.
    assert len(client.get("/v1/allocations").json()["items"]) == 1
    bad = client.post("/v1/budget-curve", json={"customers": people, "budgets": [-1.0]})
    assert bad.status_code == 422 and "budgets" in bad.json()["detail"]
