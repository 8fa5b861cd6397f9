"""Exploration: a random share of customers gets a uniformly random treatment, with its propensity.

Budget rule (the total predicted cost never exceeds the budget):
1. Each customer is explored independently with probability `rate`; an explored customer gets a
   treatment drawn uniformly from 0..K-1. Both draws are a hash of (seed, customer position)
   (`draw`), so a customer's draw does not depend on how the table is chunked: a campaign-scale
   job (app/jobs/allocate.py) explores exactly the customers this function would.
2. Explored customers are charged their predicted cost of that treatment first.
3. The solver allocates what is left of the budget to the other customers.
4. If the explored customers' cost leaves less than the others' cheapest assignment, the
   allocation is refused (`ExplorationInfeasible`, 422) with the budget this draw needs; the draw
   is never redrawn or trimmed, because conditioning on "the draw fits" would make the
   recorded probabilities wrong.

Propensity (probability that the service gives customer i the treatment it got):
    p_i = (1 - rate) * 1[t_i = g_i] + rate / K
where g_i is the solver's choice for i given everyone else's draw. For a non-explored customer
that is exactly the treatment it got (its own draw does not move the solve), so p_i = 1 - rate +
rate / K. For an explored customer g_i is its dual choice at the solve's multiplier lam (the
treatment the solver's price of cost picks; the solve with i added differs from it only for
customers at the budget margin). Given that a customer was explored, its treatment has
probability exactly 1/K, so explored decisions are a randomized (RCT) sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.core._types import FloatArray, IntArray
from app.core.solver import InfeasibleBudget, Solution, allocate, dual_choice
from app.errors import InvalidInput

SEED_LIMIT = 2**63  # seeds fit a signed 64-bit column


class ExplorationInfeasible(InvalidInput):
    """The explored customers' cost leaves too little for the others' cheapest treatments."""


@dataclass(frozen=True)
class Explored:
    """One treatment per customer with exploration flags and propensities, all (N,)."""

    treatment: IntArray
    explored: npt.NDArray[np.bool_]
    propensity: FloatArray
    lam: float  # multiplier of the solve over the non-explored customers
    revenue: float  # total predicted revenue of every customer's treatment
    cost: float  # total predicted cost (<= budget)
    budget: float  # total budget


def new_seed() -> int:
    """A fresh seed for an allocation that did not ask for one (stored, so it can be replayed)."""
    return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] % SEED_LIMIT)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser: a bijective scramble of 64-bit counters into uniform bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def draw(seed: int, rows: IntArray, rate: float, k: int) -> tuple[npt.NDArray[np.bool_], IntArray]:
    """Who is explored and the uniform arm each would get, for customers at positions `rows`.

    Counter-based (a hash of seed and position, two independent streams), so any chunk of a
    table draws the same values as the whole table.
    """
    with np.errstate(over="ignore"):
        base = np.uint64(seed % SEED_LIMIT) * _GOLDEN + rows.astype(np.uint64) * np.uint64(2)
        u_explore = (_mix(base) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        u_arm = (_mix(base + np.uint64(1)) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    explored: npt.NDArray[np.bool_] = u_explore < rate
    arm: IntArray = np.minimum((u_arm * k).astype(np.int64), k - 1)
    return explored, arm


def allocate_with_exploration(
    revenue: FloatArray, cost: FloatArray, budget: float, rate: float, seed: int
) -> Explored:
    """Explore a random `rate` share of customers, solve the rest. revenue, cost: (N, K).

    `budget` is the total budget. rate = 0 is the plain solver (propensity 1, nobody explored).
    Raises InfeasibleBudget (no exploration) or ExplorationInfeasible (this draw does not fit).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"exploration rate must lie in [0, 1], got {rate!r}")
    n, k = revenue.shape
    rows = np.arange(n)
    if rate == 0.0:
        plain = allocate(revenue, cost, budget)
        return Explored(
            plain.treatment, np.zeros(n, bool), np.ones(n), plain.lam,
            plain.revenue, plain.cost, plain.budget,
        )  # fmt: skip
    explored, drawn = draw(seed, rows, rate, k)  # (N,) Bernoulli(rate), uniform arm
    treatment = np.where(explored, drawn, 0)
    explored_cost = float(cost[rows[explored], drawn[explored]].sum())
    rest = ~explored
    lam = 0.0
    remaining = budget - explored_cost
    rest_min = float(cost[rest].min(axis=1).sum()) if rest.any() else 0.0
    solution: Solution | None = None
    if remaining >= max(rest_min, 0.0):
        try:
            solution = allocate(revenue[rest], cost[rest], remaining) if rest.any() else None
        except InfeasibleBudget:  # the solver's own sum of the cheapest arms, rounding apart
            remaining = -1.0
    if remaining < max(rest_min, 0.0):
        needed = explored_cost + max(rest_min, 0.0)
        raise ExplorationInfeasible(
            f"budget {budget:.12g} is too small for this exploration draw: the "
            f"{int(explored.sum())} explored customers' predicted cost {explored_cost:.12g} "
            f"leaves {budget - explored_cost:.12g}, but the other {int(rest.sum())} need at "
            f"least {max(rest_min, 0.0):.12g}; this draw needs a budget of {needed:.12g} "
            "(raise the budget or lower exploration_rate)",
            min_budget=needed,
        )
    if solution is not None:
        treatment[rest] = solution.treatment
        lam = solution.lam
    if not rest.any():  # nobody left to solve: price cost as the plain solver would
        try:
            lam = allocate(revenue, cost, budget).lam
        except InfeasibleBudget:
            lam = 0.0  # unreachable choice anyway: only rate = 1 explores everyone for sure
    greedy = treatment.copy()
    if explored.any():
        greedy[explored] = dual_choice(revenue[explored], cost[explored], lam)
    propensity = (1.0 - rate) * (treatment == greedy) + rate / k  # (N,)
    total_cost = float(cost[rows, treatment].sum())
    return Explored(
        treatment, explored, propensity, float(lam), float(revenue[rows, treatment].sum()),
        total_cost, float(budget),
    )  # fmt: skip
