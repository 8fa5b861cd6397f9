"""Exploration: propensities are the real choice probabilities, the budget always holds, replays."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import make_engine
from app.main import create_app
from app.services.exploration import ExplorationInfeasible, allocate_with_exploration
from app.tables import Decision


def _instance(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0.1, 2.0, (n, k))
    revenue = rng.gamma(2.0, 1.0, (n, k)) + 0.8 * cost
    return revenue, cost


def test_propensities_are_exact_for_inverse_propensity_weighting() -> None:
    """Over many seeds, E[1[t_i = t] / p_i] = 1 for every customer i and arm t.

    That is what a recorded propensity is for (IPW); it holds when p_i is customer i's true
    choice probability given the other customers' draws, which is how it is defined.
    """
    n, k, rate, draws = 200, 3, 0.3, 600
    revenue, cost = _instance(n, k, 1)
    budget = 0.5 * float(cost.min(axis=1).sum() + cost.max(axis=1).sum())
    weight = np.zeros((n, k))
    weight_sq = np.zeros((n, k))
    explored_arms = np.zeros(k)
    rows = np.arange(n)
    for seed in range(draws):  # loop over draws; each draw is vectorised over customers
        out = allocate_with_exploration(revenue, cost, budget, rate, seed)
        weight[rows, out.treatment] += 1 / out.propensity
        weight_sq[rows, out.treatment] += 1 / out.propensity**2
        explored_arms += np.bincount(out.treatment[out.explored], minlength=k)
        assert out.cost <= budget * (1 + 1e-12)
        np.testing.assert_allclose(out.propensity[~out.explored], 1 - rate + rate / k)
        assert set(np.round(out.propensity[out.explored], 12)) <= {
            round(rate / k, 12),
            round(1 - rate + rate / k, 12),
        }
    mean = weight / draws  # (N, K), should be 1 everywhere
    se = np.sqrt(np.maximum(weight_sq / draws - mean**2, 1e-6) / draws)
    z = np.abs(mean - 1) / se
    assert np.mean(z > 3.5) < 0.01, np.sort(z.ravel())[-10:]
    assert abs(float(mean.mean()) - 1) < 0.02
    # The explored share is `rate` and an explored customer's arm is uniform (chi-square, k-1 df).
    n_explored = explored_arms.sum()
    assert abs(n_explored / (n * draws) - rate) < 4 * np.sqrt(rate * (1 - rate) / (n * draws))
    expected = n_explored / k
    chi2 = float(((explored_arms - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # 0.999 quantile of chi-square with 2 df


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    k=st.integers(1, 4),
    rate=st.floats(0.0, 1.0),
    fraction=st.floats(0.0, 1.2),
    seed=st.integers(0, 2**32),
)
def test_budget_never_exceeded(n: int, k: int, rate: float, fraction: float, seed: int) -> None:
    revenue, cost = _instance(n, k, seed % 1000)
    low, high = float(cost.min(axis=1).sum()), float(cost.max(axis=1).sum())
    budget = low + fraction * (high - low)
    try:
        out = allocate_with_exploration(revenue, cost, budget, rate, seed)
    except ExplorationInfeasible as exc:
        assert exc.extra["min_budget"] >= budget * (1 - 1e-12)
        return
    chosen = cost[np.arange(n), out.treatment]
    assert chosen.sum() <= budget * (1 + 1e-12) + 1e-12
    assert out.cost == pytest.approx(chosen.sum())
    assert ((out.propensity > 0) & (out.propensity <= 1 + 1e-12)).all()
    if rate == 0:
        assert not out.explored.any() and (out.propensity == 1).all()


def _body(customers: Any, n: int, budget: float, **extra: Any) -> dict[str, Any]:
    return {"budget": budget, "customers": customers(n), **extra}


def test_allocation_with_exploration_is_stored_and_replayable(
    client: TestClient, customers: Any, db_url: str
) -> None:
    body = _body(customers, 300, 1.2, per_capita=True, exploration_rate=0.4)
    r = client.post("/v1/allocations", json=body)
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["exploration_rate"] == 0.4 and isinstance(first["seed"], int)
    decisions = first["decisions"]
    explored = [d for d in decisions if d["explored"]]
    assert first["n_explored"] == len(explored) and 60 < len(explored) < 180
    assert sum(d["expected_cost"] for d in decisions) <= first["budget_total"] * (1 + 1e-12)
    # Replaying the stored seed gives the same allocation.
    again = client.post("/v1/allocations", json={**body, "seed": first["seed"]}).json()
    keys = ("customer_id", "treatment", "propensity", "explored")
    assert [[d[k] for k in keys] for d in again["decisions"]] == [
        [d[k] for k in keys] for d in decisions
    ]
    # Stored decisions keep propensity, flag and the raw request features.
    stored = client.get(f"/v1/allocations/{first['id']}").json()
    assert [d["propensity"] for d in stored["decisions"]] == [d["propensity"] for d in decisions]
    engine = make_engine(Settings(database_url=db_url))
    with Session(engine) as session:
        features = session.scalar(
            sa.select(Decision.features).where(
                Decision.allocation_id == uuid.UUID(first["id"]), Decision.position == 0
            )
        )
    engine.dispose()
    assert features == body["customers"][0]["features"]


def test_no_exploration_by_default(client: TestClient, customers: Any) -> None:
    r = client.post("/v1/allocations", json=_body(customers, 20, 10.0))
    assert r.status_code == 201
    out = r.json()
    assert out["exploration_rate"] == 0 and out["seed"] is None and out["n_explored"] == 0
    assert all(d["propensity"] == 1 and not d["explored"] for d in out["decisions"])


def test_exploration_that_does_not_fit_is_refused(client: TestClient, customers: Any) -> None:
    # Everyone explored: the random arms cost more than the cheapest assignment the budget covers.
    r = client.post(
        "/v1/allocations", json=_body(customers, 50, 0.2, per_capita=True, exploration_rate=1.0)
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "ExplorationInfeasible" and r.json()["min_budget"] > 10.0
    r = client.post("/v1/allocations", json=_body(customers, 5, 1.0, exploration_rate=1.5))
    assert r.status_code == 422 and "exploration_rate" in r.json()["detail"]


def test_default_rate_comes_from_settings(
    client: TestClient, settings: Settings, customers: Any
) -> None:
    exploring = settings.model_copy(update={"exploration_rate": 0.25})
    with TestClient(create_app(exploring), headers=dict(client.headers)) as other:
        out = other.post("/v1/allocations", json=_body(customers, 40, 3.0, per_capita=True))
        assert out.status_code == 201, out.text
        assert out.json()["exploration_rate"] == 0.25 and out.json()["seed"] is not None
        explicit = _body(customers, 40, 3.0, per_capita=True, exploration_rate=0.0)
        assert other.post("/v1/allocations", json=explicit).json()["n_explored"] == 0
