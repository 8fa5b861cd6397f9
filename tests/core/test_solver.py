"""Solver properties against an independent HiGHS LP/MIP of the same knapsack, plus bad input."""

from __future__ import annotations

import highspy
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core import solver
from app.core.solver import InfeasibleBudget, Solution, allocate, dual_choice
from tests.utils.highs import knapsack_model


def highs_optimum(revenue: np.ndarray, cost: np.ndarray, budget: float, integer: bool) -> float:
    """Optimum of the knapsack (MIP) or its LP relaxation, solved by HiGHS to zero gap."""
    lp = knapsack_model(revenue, cost, budget, integer)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.passModel(lp)
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return float(h.getInfo().objective_function_value)


@st.composite
def instances(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float]:
    """Tiny instances: ties, zero/equal costs, negative revenue, a budget above the minimum."""
    n = draw(st.integers(1, 7))
    k = draw(st.integers(1, 4))
    cells = st.integers(-4, 12).map(float)
    revenue = np.array(draw(st.lists(cells, min_size=n * k, max_size=n * k))).reshape(n, k)
    costs = st.sampled_from([0.0, 0.0, 1.0, 1.0, 2.5, 3.0, 4.0, 7.25])
    cost = np.array(draw(st.lists(costs, min_size=n * k, max_size=n * k))).reshape(n, k)
    lo, hi = cost.min(axis=1).sum(), cost.max(axis=1).sum()
    budget = lo + draw(st.floats(0.0, 1.0)) * (hi - lo)
    return revenue, cost, float(budget)


def check_feasible(alloc: Solution, revenue: np.ndarray, cost: np.ndarray, budget: float) -> None:
    """The returned assignment is one valid treatment each, its totals match, it fits the budget."""
    rows = np.arange(revenue.shape[0])
    assert alloc.treatment.shape == (revenue.shape[0],)
    assert alloc.treatment.dtype == np.int64
    assert ((alloc.treatment >= 0) & (alloc.treatment < revenue.shape[1])).all()
    assert alloc.cost == pytest.approx(cost[rows, alloc.treatment].sum(), rel=1e-12, abs=1e-12)
    assert alloc.revenue == pytest.approx(revenue[rows, alloc.treatment].sum(), rel=1e-12, abs=1e-9)
    assert alloc.cost <= budget
    assert alloc.lam >= 0.0


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_within_budget_and_near_lp_bound(inst: tuple[np.ndarray, np.ndarray, float]) -> None:
    revenue, cost, budget = inst
    alloc = allocate(revenue, cost, budget)
    check_feasible(alloc, revenue, cost, budget)
    lp = highs_optimum(revenue, cost, budget, integer=False)
    mip = highs_optimum(revenue, cost, budget, integer=True)
    spread = float((revenue.max(axis=1) - revenue.min(axis=1)).max())
    assert alloc.revenue >= lp - spread - 1e-7
    assert alloc.revenue <= mip + 1e-7


@settings(max_examples=150, deadline=None)
@given(instances(), st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6))
def test_revenue_non_decreasing_in_budget(
    inst: tuple[np.ndarray, np.ndarray, float], fractions: list[float]
) -> None:
    revenue, cost, _ = inst
    lo, hi = cost.min(axis=1).sum(), cost.max(axis=1).sum()
    totals = [allocate(revenue, cost, lo + f * (hi - lo)).revenue for f in sorted(fractions)]
    assert all(b >= a - 1e-9 for a, b in zip(totals, totals[1:], strict=False))


@settings(max_examples=100, deadline=None)
@given(instances(), st.floats(0.0, 0.999))
def test_infeasible_budget_raises_with_minimum(
    inst: tuple[np.ndarray, np.ndarray, float], fraction: float
) -> None:
    revenue, cost, _ = inst
    cost = cost + 0.5  # every treatment costs something, so some budgets are infeasible
    need = float(cost.min(axis=1).sum())
    with pytest.raises(InfeasibleBudget) as err:
        allocate(revenue, cost, need * fraction)
    assert err.value.min_budget == pytest.approx(need)
    assert f"{need:.12g}" in str(err.value)
    allocate(revenue, cost, err.value.min_budget)  # the reported minimum is itself feasible


def test_matches_mip_on_most_tiny_instances(capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(7)
    trials, hits = 300, 0
    for _ in range(trials):
        n, k = int(rng.integers(2, 9)), int(rng.integers(2, 5))
        revenue = np.round(rng.normal(3.0, 2.0, (n, k)), 2)
        cost = np.round(rng.exponential(2.0, (n, k)) * (rng.random((n, k)) > 0.2), 2)
        lo, hi = cost.min(axis=1).sum(), cost.max(axis=1).sum()
        budget = float(lo + rng.random() * (hi - lo))
        got = allocate(revenue, cost, budget).revenue
        hits += abs(got - highs_optimum(revenue, cost, budget, integer=True)) <= 1e-7
    rate = hits / trials
    with capsys.disabled():
        print(f"\nsolver == HiGHS MIP optimum on {hits}/{trials} tiny instances ({rate:.1%})")
    assert rate >= 0.9


def test_larger_instance_matches_lp_closely() -> None:
    rng = np.random.default_rng(3)
    n, k = 2000, 5
    cost = np.cumsum(rng.exponential(1.0, (n, k)), axis=1)
    revenue = np.cumsum(rng.exponential(1.0, (n, k)) * np.exp(-0.6 * np.arange(k)), axis=1)
    budget = 0.4 * cost.sum(axis=1).mean() * n / k
    alloc = allocate(revenue, cost, budget)
    lp = highs_optimum(revenue, cost, budget, integer=False)
    assert alloc.cost <= budget
    assert lp - alloc.revenue <= (revenue.max(axis=1) - revenue.min(axis=1)).max()
    assert (lp - alloc.revenue) / lp < 1e-3


def test_unconstrained_budget_returns_best_with_zero_lam() -> None:
    revenue = np.array([[1.0, 5.0, 5.0], [4.0, 2.0, 4.0]])
    cost = np.array([[0.0, 3.0, 2.0], [1.0, 0.0, 1.0]])
    alloc = allocate(revenue, cost, 100.0)
    assert alloc.treatment.tolist() == [2, 0]  # max revenue, ties -> lower cost, then lower index
    assert alloc.lam == 0.0 and alloc.revenue == 9.0 and alloc.cost == 3.0


def test_minimum_budget_picks_cheapest_richest() -> None:
    revenue = np.array([[-1.0, 2.0, 3.0], [5.0, 1.0, 0.0]])
    cost = np.array([[2.0, 1.0, 1.0], [0.0, 0.0, 3.0]])  # treatment 0 is not always the cheapest
    alloc = allocate(revenue, cost, 1.0)
    assert alloc.treatment.tolist() == [2, 0]
    assert alloc.cost == 1.0 and alloc.revenue == 8.0


def test_negative_revenue_and_zero_costs() -> None:
    revenue = np.array([[-5.0, -1.0], [-3.0, -4.0], [-2.0, 0.0]])
    cost = np.array([[0.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    alloc = allocate(revenue, cost, 1.0)
    assert alloc.treatment.tolist() == [0, 0, 1]
    assert alloc.revenue == -8.0 and alloc.cost == 1.0
    assert allocate(revenue, cost, 3.0).treatment.tolist() == [1, 0, 1]


def test_lam_is_lp_multiplier() -> None:
    revenue = np.array([[0.0, 4.0, 6.0], [0.0, 3.0, 3.5]])
    cost = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])  # slopes 4, 3, 2, 0.5
    alloc = allocate(revenue, cost, 2.5)
    assert alloc.lam == 2.0  # cheapest segments with slope 4 and 3 fit, slope 2 is fractional
    assert alloc.treatment.tolist() == [1, 1]
    np.testing.assert_array_equal(dual_choice(revenue, cost, 2.0), [1, 1])  # tie -> lower cost
    np.testing.assert_array_equal(dual_choice(revenue, cost, 1.9), [2, 1])


def test_per_capita_budget() -> None:
    revenue = np.array([[0.0, 1.0]] * 4)
    cost = np.array([[0.0, 1.0]] * 4)
    assert allocate(revenue, cost, 0.5, per_capita=True).cost == 2.0
    assert allocate(revenue, cost, 0.5, per_capita=True).budget == 2.0


def test_deterministic_large_instance() -> None:
    rng = np.random.default_rng(11)
    n, k = 10_000, 4  # above the size where lam is bracketed on a sample
    cost = np.round(rng.exponential(1.0, (n, k)), 1)
    revenue = np.round(rng.normal(1.0, 1.0, (n, k)), 1)
    budget = float(cost.min(axis=1).sum() + 0.3 * (cost.max(axis=1) - cost.min(axis=1)).sum())
    first, second = allocate(revenue, cost, budget), allocate(revenue, cost, budget)
    np.testing.assert_array_equal(first.treatment, second.treatment)
    assert first.cost <= budget
    lp = highs_optimum(revenue, cost, budget, integer=False)
    assert lp - first.revenue <= (revenue.max(axis=1) - revenue.min(axis=1)).max()


@pytest.mark.parametrize(
    ("revenue", "cost", "budget", "message"),
    [
        (np.ones((2, 3)), np.ones((2, 2)), 1.0, "shapes differ"),
        (np.ones(3), np.ones(3), 1.0, "shape \\(N, K\\)"),
        (np.ones((0, 3)), np.ones((0, 3)), 1.0, "empty"),
        (np.ones((2, 0)), np.ones((2, 0)), 1.0, "empty"),
        (np.array([[1.0, np.nan]]), np.ones((1, 2)), 1.0, "revenue has non-finite value nan"),
        (np.ones((1, 2)), np.array([[np.inf, 1.0]]), 1.0, "cost has non-finite value inf"),
        (np.ones((1, 2)), np.ones((1, 2)), float("nan"), "budget must be finite"),
        (np.ones((1, 2)), np.ones((1, 2)), float("inf"), "budget must be finite"),
        (np.ones((1, 2)), np.ones((1, 2)), -1.0, "budget must be >= 0"),
        (np.ones((1, 2)), np.ones((1, 2)), "lots", "budget must be a number"),
        ([["a", "b"]], np.ones((1, 2)), 1.0, "revenue must be a numeric array"),
    ],
)
def test_bad_input_raises_value_error(
    revenue: object, cost: object, budget: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        allocate(revenue, cost, budget)  # type: ignore[arg-type]


def test_infeasible_is_a_value_error_with_message() -> None:
    with pytest.raises(ValueError, match="minimum feasible budget is 3"):
        allocate(np.zeros((2, 2)), np.array([[1.0, 2.0], [2.0, 5.0]]), 2.0)


def test_dual_choice_bad_input_and_ties() -> None:
    revenue = np.array([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    cost = np.array([[1.0, 0.0, 1.0], [2.0, 1.0, 1.0]])
    np.testing.assert_array_equal(dual_choice(revenue, cost, 1.0), [1, 1])
    np.testing.assert_array_equal(dual_choice(revenue, cost, 0.0), [2, 1])
    with pytest.raises(ValueError, match="lam must be finite"):
        dual_choice(revenue, cost, float("nan"))
    with pytest.raises(ValueError, match="shapes differ"):
        dual_choice(revenue, cost[:, :2], 0.0)


@settings(max_examples=100, deadline=None)
@given(instances(), st.floats(0.0, 5.0))
def test_dual_choice_maximises_dual_score(
    inst: tuple[np.ndarray, np.ndarray, float], lam: float
) -> None:
    revenue, cost, _ = inst
    choice = dual_choice(revenue, cost, lam)
    score = revenue - lam * cost
    rows = np.arange(revenue.shape[0])
    assert (score[rows, choice] >= score.max(axis=1)).all()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            st.lists(st.lists(st.integers(-2, 2), min_size=k, max_size=k), min_size=1, max_size=30),
            st.lists(st.lists(st.integers(-2, 2), min_size=k, max_size=k), min_size=1, max_size=30),
        )
    )
)
def test_lexmin_fast_path_equals_the_sweep(pair: tuple[list[list[int]], list[list[int]]]) -> None:
    """Integer keys in [-2, 2] make ties in both keys common; the argmin shortcut must keep the
    sweep's rule (lowest first, then lowest second, then lowest index) on every customer."""
    n = min(len(pair[0]), len(pair[1]))
    first = np.asarray(pair[0][:n], dtype=np.float64).T  # (K, N)
    second = np.asarray(pair[1][:n], dtype=np.float64).T
    np.testing.assert_array_equal(
        solver._lexmin(first, second), solver._lexmin_sweep(first, second)
    )


def test_dual_chooser_matches_dual_choice_and_validates_once() -> None:
    rng = np.random.default_rng(3)
    revenue = np.round(rng.normal(1, 1, (500, 4)), 1)
    cost = np.round(rng.exponential(1, (500, 4)), 1)
    choose = solver.dual_chooser(revenue, cost)
    for lam in (0.0, 0.5, 1.0, 3.0):
        np.testing.assert_array_equal(choose(lam), dual_choice(revenue, cost, lam))
    with pytest.raises(ValueError, match="lam must be finite"):
        choose(float("inf"))
    with pytest.raises(ValueError, match="non-finite value nan at customer 1, treatment 2"):
        revenue[1, 2] = np.nan
        solver.dual_chooser(revenue, cost)


@pytest.mark.parametrize("fraction", [0.0, 1e-7, 0.05, 0.5, 0.97, 0.999999, 1.0, 2.0])
def test_bracketed_path_agrees_with_full_hulls(
    fraction: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    n, k = 20_000, 4  # above the size where lam is bracketed on a sample
    cost = np.round(rng.exponential(1.0, (n, k)), 2)
    revenue = np.round(rng.normal(1.0, 1.0, (n, k)), 2)
    lo, hi = cost.min(axis=1).sum(), cost[np.arange(n), revenue.argmax(axis=1)].sum()
    budget = float(lo + fraction * (hi - lo))
    fast = allocate(revenue, cost, budget)
    monkeypatch.setattr(solver, "_SMALL_N", 10**9)
    full = allocate(revenue, cost, budget)
    assert fast.cost <= budget and full.cost <= budget
    assert fast.lam == pytest.approx(full.lam, rel=1e-9)
    assert fast.revenue == pytest.approx(full.revenue, rel=1e-12)


def test_bracketed_path_infeasible() -> None:
    cost = np.ones((10_000, 3))
    with pytest.raises(InfeasibleBudget, match="minimum feasible budget is 10000"):
        allocate(np.zeros((10_000, 3)), cost, 9_999.0)


@pytest.mark.parametrize("seed", range(6))
def test_bracketed_path_agrees_on_awkward_instances(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(5_000, 12_000)), int(rng.integers(2, 7))
    cost = rng.choice([0.0, 0.0, 1.0, 2.0, 3.5, 10.0], size=(n, k))  # zero and equal costs
    revenue = np.round(rng.normal(0.0, 2.0, (n, k)), 1)  # negative revenue, many ties
    lo, top = cost.min(axis=1).sum(), cost[np.arange(n), revenue.argmax(axis=1)].sum()
    budget = float(lo + rng.uniform(0.02, 0.98) * (top - lo))  # the budget binds
    fast = allocate(revenue, cost, budget)
    monkeypatch.setattr(solver, "_SMALL_N", 10**9)
    full = allocate(revenue, cost, budget)
    assert fast.cost <= budget and full.cost <= budget
    assert fast.lam > 0 and fast.lam == pytest.approx(full.lam, rel=1e-9)
    spread = float((revenue.max(axis=1) - revenue.min(axis=1)).max())
    assert abs(fast.revenue - full.revenue) <= spread


def test_repair_undoes_least_valuable_upgrades_until_within_budget() -> None:
    start = (np.zeros(4, np.int64), np.zeros(4), np.zeros(4))
    state = (np.ones(4, np.int64), np.array([1.0, 2.0, 3.0, 0.0]), np.array([5.0, 2.0, 9.0, 0.0]))
    t, cost, revenue = solver._repair(state, start, total=4.5)  # over budget by 1.5
    assert cost.sum() <= 4.5
    assert t.tolist() == [1, 0, 1, 1]  # the upgrade with the lowest gain per cost (1.0) is undone
    assert revenue.tolist() == [5.0, 0.0, 9.0, 0.0]


def test_negative_costs_within_budget_and_bounds() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        n, k = int(rng.integers(1, 8)), int(rng.integers(1, 5))
        revenue = np.round(rng.normal(2.0, 2.0, (n, k)), 1)
        cost = np.round(rng.normal(1.0, 2.0, (n, k)), 1)  # some treatments pay back budget
        lo, hi = cost.min(axis=1).sum(), cost.max(axis=1).sum()
        budget = max(0.0, float(lo + rng.random() * (hi - lo)))  # >= lo: feasible
        alloc = allocate(revenue, cost, budget)
        check_feasible(alloc, revenue, cost, budget)
        spread = float((revenue.max(axis=1) - revenue.min(axis=1)).max())
        assert alloc.revenue >= highs_optimum(revenue, cost, budget, integer=False) - spread - 1e-7
        assert alloc.revenue <= highs_optimum(revenue, cost, budget, integer=True) + 1e-7
