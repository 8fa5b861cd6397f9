"""The chunked solver (app/core/batch.py) returns allocate()'s assignment on the whole table."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core import batch
from app.core.batch import Chunk, local_engine, solve
from app.core.solver import InfeasibleBudget, allocate


def chunked(
    revenue: np.ndarray, cost: np.ndarray, sizes: list[int]
) -> Callable[[], Iterator[Chunk]]:
    """Chunks of the given sizes (cycled) over the rows, with row keys 0..N-1."""
    n = revenue.shape[0]

    def chunks() -> Iterator[Chunk]:
        lo, i = 0, 0
        while lo < n:
            hi = min(n, lo + sizes[i % len(sizes)])
            yield Chunk.of(np.arange(lo, hi), revenue[lo:hi], cost[lo:hi])
            lo, i = hi, i + 1

    return chunks


def check_same_as_allocate(
    revenue: np.ndarray, cost: np.ndarray, budget: float, sizes: list[int]
) -> batch.Plan:
    chunks = chunked(revenue, cost, sizes)
    expected = allocate(revenue, cost, budget)
    plan = solve(local_engine(chunks), budget)
    treatment = np.concatenate([plan.choose(c) for c in chunks()])
    rows = np.arange(revenue.shape[0])
    revenue_sum, cost_sum = revenue[rows, treatment].sum(), cost[rows, treatment].sum()
    assert cost_sum <= plan.budget * (1 + batch.SUM_RTOL)
    assert revenue_sum == pytest.approx(expected.revenue, rel=1e-9, abs=1e-9)
    assert plan.revenue == pytest.approx(revenue_sum, rel=1e-9, abs=1e-9)
    assert plan.cost == pytest.approx(cost_sum, rel=1e-9, abs=1e-9)
    assert plan.lam == pytest.approx(expected.lam, rel=1e-12, abs=1e-12)
    return plan


@st.composite
def tables(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float, list[int]]:
    """Small tables with ties (values on a grid), free arms, and random chunk sizes."""
    n = draw(st.integers(1, 60))
    k = draw(st.integers(1, 5))
    grid = draw(st.sampled_from([0.5, 0.1, 0.0]))  # 0: continuous values
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    revenue, cost = rng.gamma(1.0, 2.0, (n, k)) - 0.5, rng.gamma(1.0, 1.0, (n, k))
    if grid:
        revenue, cost = np.round(revenue / grid) * grid, np.round(cost / grid) * grid
    if draw(st.booleans()):
        cost[:, 0] = 0.0
    lo, hi = cost.min(axis=1).sum(), cost.max(axis=1).sum()
    budget = float(lo + draw(st.floats(0.0, 1.1)) * (hi - lo))
    sizes = draw(st.lists(st.integers(1, 70), min_size=1, max_size=4))
    return revenue, cost, budget, sizes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_small_tables_match_allocate(case: tuple[np.ndarray, np.ndarray, float, list[int]]) -> None:
    check_same_as_allocate(*case)


@pytest.mark.parametrize("grid", [0.0, 0.05])
def test_large_table_matches_allocate_through_its_bracketed_path(grid: float) -> None:
    """N > 4096 takes allocate's sampled-bracket path; the chunked passes must agree with it."""
    rng = np.random.default_rng(7)
    revenue, cost = rng.gamma(1.0, 1.0, (30_000, 4)), rng.gamma(1.0, 1.0, (30_000, 4))
    if grid:  # many exactly equal slopes: the cut between them decides
        revenue, cost = np.round(revenue / grid) * grid + grid, np.round(cost / grid) * grid + grid
    budget = float(cost.min(axis=1).sum() * 1.4)
    plan = check_same_as_allocate(revenue, cost, budget, [4_096, 5_000, 777])
    assert plan.stats["passes"] >= 4  # totals, histogram(s), collect, LP totals


def test_radix_refines_when_one_bin_is_crowded(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny collect limit the selection needs several 16-bit passes; same answer."""
    monkeypatch.setattr(batch, "COLLECT_LIMIT", 3)
    rng = np.random.default_rng(3)
    revenue, cost = rng.gamma(1.0, 1.0, (5_000, 3)), rng.gamma(1.0, 1.0, (5_000, 3))
    plan = check_same_as_allocate(revenue, cost, float(cost.min(axis=1).sum() * 1.3), [999])
    assert plan.stats["passes"] >= 5
    assert plan.stats["n_segments_collected"] <= 3


def test_per_capita_and_richest_fits() -> None:
    rng = np.random.default_rng(1)
    revenue, cost = rng.gamma(1.0, 1.0, (500, 3)), rng.gamma(1.0, 1.0, (500, 3))
    chunks = chunked(revenue, cost, [64])
    plan = solve(local_engine(chunks), 0.9, per_capita=True)
    assert plan.budget == pytest.approx(450.0)
    assert plan.revenue == pytest.approx(allocate(revenue, cost, 450.0).revenue, rel=1e-9)
    rich = solve(local_engine(chunks), 1e9)
    assert rich.lam == 0.0 and rich.cut is None
    assert rich.revenue == pytest.approx(revenue.max(axis=1).sum())


def test_infeasible_budget_names_the_minimum() -> None:
    cost = np.full((10, 2), 2.0)
    with pytest.raises(InfeasibleBudget) as info:
        solve(local_engine(chunked(np.ones((10, 2)), cost, [3])), 5.0)
    assert info.value.min_budget == pytest.approx(20.0)


def test_bad_chunks_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Chunk.of([2, 1], np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-finite prediction at row 5"):
        Chunk.of([4, 5], [[1.0, 1.0], [np.nan, 1.0]], np.ones((2, 2)))
    with pytest.raises(ValueError, match="no rows"):
        solve(local_engine(lambda: iter(())), 1.0)
