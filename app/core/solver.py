"""Budgeted treatment allocation (multi-choice knapsack): exact LP multiplier, then greedy fill.

Problem: maximise sum_i revenue[i, t_i] subject to sum_i cost[i, t_i] <= budget, one treatment per
customer (methods §1). Costs may be zero, equal or negative and in any order; revenue
may be negative; treatment 0 is not assumed to be free.

Method (Sinha-Zoltners): 1. everyone on the cheapest treatment; above the budget ->
`InfeasibleBudget` with the minimum budget; if the unconstrained best fits, return it (lam = 0).
2. Each customer's upper convex hull of (cost, revenue), walked from its start, gives segments
with dC > 0, dR > 0 and non-increasing slope; the LP relaxation takes them by decreasing slope
until the budget runs out, and the slope of the first one that does not fit whole is the LP
multiplier `lam`. For large N, lam is bracketed on a strided sample, the bracket is verified on
all customers, and only customers whose dual choice differs across it need their hull.
3. Keep the whole segments; spend the leftover on moves with the best revenue gain per extra cost
that still fit. 4. Recompute totals; should rounding ever exceed the budget, undo the least
valuable upgrades, so `cost <= budget` always holds.

Tie rules (everything is deterministic):
- start: lowest cost, then highest revenue, then lowest index;
- unconstrained best: highest revenue, then lowest cost, then lowest index;
- hull: next vertex has the steepest slope, then the smallest extra cost (collinear points stay
  separate vertices), then the lowest index;
- LP order: slope descending, then customer index ascending, then position along the hull;
- greedy fill: moves by gain/cost ratio descending, then larger gain, then customer index, then
  treatment index; each taken while it fits, at most one per customer per round;
- `dual_choice`: highest revenue - lam * cost, then lowest cost, then lowest index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core._types import FloatArray, IntArray

_SMALL_N = 4_096  # up to this many customers every hull is built; above, lam is bracketed first
_CHUNK = 16_384  # customers per block in full sweeps, so temporaries stay in cache
_SAMPLE = 8_192  # customers in the strided sample that brackets lam (at most N // 8)
_BRACKET_MARGIN = 0.02  # relative budget margin of the first bracket; widened x4 until verified
_FILL_ROUNDS = 12  # greedy rounds spending the leftover budget

State = tuple[IntArray, FloatArray, FloatArray]  # treatment, its cost, its revenue: each (N,)


class InfeasibleBudget(ValueError):
    """Raised when even the cheapest treatment for everyone costs more than the budget."""

    def __init__(self, budget: float, min_budget: float) -> None:
        self.budget = budget
        self.min_budget = min_budget
        super().__init__(
            f"budget {budget:.12g} is infeasible: the minimum feasible budget is "
            f"{min_budget:.12g} (every customer on its cheapest treatment)"
        )


@dataclass(frozen=True)
class Solution:
    """One treatment per customer with its totals and the LP multiplier that priced cost."""

    treatment: IntArray  # (N,) chosen treatment per customer
    lam: float  # Lagrange multiplier (shadow price of cost) of the LP relaxation
    revenue: float  # total revenue of the chosen assignment
    cost: float  # total cost of the chosen assignment (always <= budget)
    budget: float  # total budget used


def _as_matrix(name: str, values: object) -> FloatArray:
    """Coerce to float64 (N, K) and reject empty or non-finite input, naming the culprit."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array: {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, K), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); need N >= 1 and K >= 1")
    if not np.isfinite(arr.sum()):  # cheap screen; an overflowing sum of finite values is fine
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            i, j = (int(v) for v in bad[0])
            raise ValueError(
                f"{name} has non-finite value {arr[i, j]} at customer {i}, treatment {j}"
            )
    return arr


def _columns(revenue: object, cost: object) -> tuple[FloatArray, FloatArray]:
    """Validate both matrices and return them as contiguous (K, N) columns for fast K-loops."""
    rev = _as_matrix("revenue", revenue)
    cst = _as_matrix("cost", cost)
    if rev.shape != cst.shape:
        raise ValueError(f"revenue {rev.shape} and cost {cst.shape} shapes differ")
    return np.ascontiguousarray(rev.T), np.ascontiguousarray(cst.T)


def _lexmin(first: FloatArray, second: FloatArray) -> IntArray:
    """Per customer: minimise `first`, then `second`, then the index. (K, N) -> (N,).

    One argmin settles every customer without an exact tie in `first` (the usual case); only
    tied customers go through the K-step lexicographic sweep. Twice as fast as sweeping all.
    """
    idx: IntArray = np.argmin(first, axis=0)
    tied = first == first.min(axis=0)
    if np.count_nonzero(tied) > first.shape[1]:
        rows = np.flatnonzero(np.count_nonzero(tied, axis=0) > 1)
        idx[rows] = _lexmin_sweep(first[:, rows], second[:, rows])
    return idx


def _lexmin_sweep(first: FloatArray, second: FloatArray) -> IntArray:
    """`_lexmin` by a sweep over the K rows, keeping the lexicographically best so far."""
    idx = np.zeros(first.shape[1], np.int64)
    b1, b2 = first[0].copy(), second[0].copy()
    for j in range(1, first.shape[0]):
        better = (first[j] < b1) | ((first[j] == b1) & (second[j] < b2))
        np.copyto(idx, j, where=better)
        np.copyto(b1, first[j], where=better)
        np.copyto(b2, second[j], where=better)
    return idx


def _state(R: FloatArray, C: FloatArray, idx: IntArray) -> State:
    """Treatment with its cost and revenue per customer. R, C: (K, N); idx: (N,)."""
    cols = np.arange(idx.size)
    return idx, C[idx, cols], R[idx, cols]


def _dual_states(R: FloatArray, C: FloatArray, lams: list[float]) -> list[State]:
    """Argmax of R - lam*C per customer for several lam in one chunked sweep (internal, fast).

    R, C: (K, N). Exact score ties go to the lower index; the spend of this choice can only
    differ from `dual_choice` at exact breakpoints, which the callers tolerate.
    """
    n = R.shape[1]
    outs = [(np.zeros(n, np.int64), C[0].copy(), R[0].copy()) for _ in lams]
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        Rb, Cb = R[:, lo:hi], C[:, lo:hi]  # (K, b): stays in cache across all lams
        score = np.empty(hi - lo)
        for lam, (idx, bc, br) in zip(lams, outs, strict=True):
            best = Rb[0] - lam * Cb[0]
            bi, bcb, brb = idx[lo:hi], bc[lo:hi], br[lo:hi]
            for j in range(1, R.shape[0]):
                np.multiply(Cb[j], -lam, out=score)
                score += Rb[j]
                better = score > best
                np.maximum(best, score, out=best)
                np.copyto(bi, j, where=better)
                np.copyto(bcb, Cb[j], where=better)
                np.copyto(brb, Rb[j], where=better)
    return outs


def _hull(R: FloatArray, C: FloatArray, start: IntArray) -> tuple[IntArray, FloatArray, FloatArray]:
    """Upper hull walked from `start` (gift wrapping over K). R, C: (K, M).

    Returns path (K, M) of vertex indices (path[0] = start, repeated after the last vertex),
    slope and dC (K-1, M) of each segment (-inf / 0 where the hull already ended); slopes are
    capped to be non-increasing along each hull so 'slope > x' always selects a prefix.
    """
    K, m = R.shape
    cols = np.arange(m)
    path = np.tile(start, (K, 1))
    slope, dcost = np.full((K - 1, m), -np.inf), np.zeros((K - 1, m))
    cur_c, cur_r = C[start, cols], R[start, cols]
    prev = np.full(m, np.inf)
    active = cols
    for step in range(1, K):
        if active.size == 0:
            break
        Ra, Ca = R[:, active], C[:, active]  # (K, a)
        dc, dr = Ca - cur_c[active], Ra - cur_r[active]  # (K, a)
        ok = (dc > 0) & (dr > 0)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            sl = np.where(ok, dr / dc, -np.inf)
        best = sl.max(axis=0)
        # steepest, then smallest extra cost, then lowest index (argmin keeps the first)
        bj = np.where(sl == best, dc, np.inf).argmin(axis=0)
        bj[best == -np.inf] = -1
        bdc = dc[bj, np.arange(active.size)]
        pos = np.flatnonzero(bj >= 0)
        active, bj = active[pos], bj[pos]
        capped = np.minimum(best[pos], prev[active])
        slope[step - 1, active], dcost[step - 1, active], prev[active] = capped, bdc[pos], capped
        path[step:, active] = bj
        cur_c[active], cur_r[active] = Ca[bj, pos], Ra[bj, pos]
    return path, slope, dcost


def _lp_fill(
    R: FloatArray, C: FloatArray, state: State, rows: IntArray, leftover: float, lam_floor: float
) -> tuple[float, State]:
    """Take whole hull segments of `rows` in decreasing slope order while they fit `leftover`."""
    t, cur_c, cur_r = state[0].copy(), state[1].copy(), state[2].copy()
    path, slope, dcost = _hull(R[:, rows], C[:, rows], t[rows])
    row, step = np.nonzero(slope.T > -np.inf)  # valid segments in (row, step) order, (S,) each
    seg_slope, seg_dc = slope[step, row], dcost[step, row]
    order = np.argsort(-seg_slope, kind="stable")  # ties keep (row, step) order
    cum = np.cumsum(seg_dc[order])
    k = int(np.searchsorted(cum, leftover, side="right"))
    lam = float(seg_slope[order[k]]) if k < cum.size else lam_floor
    taken = np.bincount(row[order[:k]], minlength=rows.size)
    new_t = path[taken, np.arange(rows.size)]
    t[rows] = new_t
    cur_c[rows], cur_r[rows] = C[new_t, rows], R[new_t, rows]
    return max(lam, 0.0), (t, cur_c, cur_r)


def _sample_lams(R: FloatArray, C: FloatArray, total: float) -> Callable[[float], float]:
    """Estimate, from a strided sample of hulls, the multiplier at which a budget share is spent.

    The returned function maps a fraction f of the estimated leftover budget to the slope at
    which the sample's cumulative hull spend passes f (inf for f <= 0, 0 past the last segment).
    """
    n = R.shape[1]
    sample = np.arange(0, n, max(8, n // _SAMPLE))
    Rs, Cs = R[:, sample], C[:, sample]
    start = _state(Rs, Cs, _lexmin(Cs, -Rs))
    _, slope, dcost = _hull(Rs, Cs, start[0])
    valid = slope > -np.inf
    order = np.argsort(-slope[valid], kind="stable")
    slopes, cum = slope[valid][order], np.cumsum(dcost[valid][order])
    target = total * sample.size / n - float(np.sum(start[1]))

    def lam_at(fraction: float) -> float:
        if target * fraction <= 0:
            return np.inf
        k = int(np.searchsorted(cum, target * fraction, side="right"))
        return float(slopes[k]) if k < cum.size else 0.0

    return lam_at


def _bracket(R: FloatArray, C: FloatArray, total: float) -> tuple[float, State, IntArray]:
    """Bracket the LP multiplier on a sample, verify it on all customers (large N only).

    Returns (lam_lo, state at lam_hi, rows whose dual choice differs between lam_hi and lam_lo),
    or (0, richest state, no rows) when the unconstrained best assignment fits. Spend at lam_hi
    fits the budget and spend at lam_lo exceeds it, so the multiplier lies in [lam_lo, lam_hi]
    and only those rows can hold a hull segment with a slope inside. Raises InfeasibleBudget.
    """
    lam_at = _sample_lams(R, C, total)
    up = down = _BRACKET_MARGIN
    lam_hi, lam_lo = lam_at(1.0 - up), lam_at(1.0 + down)
    hi, lo = _dual_states(R, C, [lam_hi if np.isfinite(lam_hi) else 1.0, lam_lo])
    if lam_lo == 0.0:  # richest choice with the documented tie rule (lowest cost)
        lo = _state(R, C, _lexmin(-R, C))
    while float(np.sum(hi[1])) > total or not np.isfinite(lam_hi):
        start = _state(R, C, _lexmin(C, -R))
        if float(np.sum(start[1])) > total:
            raise InfeasibleBudget(total, float(np.sum(start[1])))
        up *= 4.0
        lam_hi = lam_at(1.0 - up)
        if not np.isfinite(lam_hi):
            hi = start
            break
        (hi,) = _dual_states(R, C, [lam_hi])
    while float(np.sum(lo[1])) <= total:
        if lam_lo == 0.0:  # the richest choice fits: no budget pressure at all
            return 0.0, lo, np.arange(0)
        down *= 4.0
        lam_lo = lam_at(1.0 + down)
        if lam_lo == 0.0:
            lo = _state(R, C, _lexmin(-R, C))
        else:
            (lo,) = _dual_states(R, C, [lam_lo])
    return lam_lo, hi, np.flatnonzero(lo[0] != hi[0])


def _upgrades(
    R: FloatArray, C: FloatArray, state: State, rem: float, rows: IntArray | None
) -> tuple[IntArray, IntArray, FloatArray, FloatArray]:
    """(customer, treatment) moves that raise revenue and cost more, but at most `rem` more.

    R, C: (K, N); rows: customers to scan (None = all). Returns row, treatment, dC, dR: (P,).
    """
    t, cur_c, cur_r = state
    if rows is None:
        rows = np.arange(t.size)
        Rs, Cs, cc, rc = R, C, cur_c, cur_r
    else:
        Rs, Cs, cc, rc = R[:, rows], C[:, rows], cur_c[rows], cur_r[rows]
    found: list[tuple[IntArray, IntArray, FloatArray, FloatArray]] = []
    for j in range(R.shape[0]):
        dr = Rs[j] - rc
        dc = Cs[j] - cc
        hit = np.flatnonzero((dr > 0) & (dc <= rem))
        hit = hit[dc[hit] > 0]
        found.append((rows[hit], np.full(hit.size, j), dc[hit], dr[hit]))
    row, treatment, dcost, dgain = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return row, treatment, dcost, dgain


def _greedy_fill(
    R: FloatArray, C: FloatArray, state: State, total: float, rounds: int = _FILL_ROUNDS
) -> State:
    """Spend the leftover on upgrades with the best revenue gain per extra cost that fit.

    Round 1 scans every customer; each later round only the customers upgraded in the one
    before (everyone else's moves no longer fit). `app.core.batch` runs round 1 over chunks and
    hands the rest to this function on the upgraded customers alone, hence `rounds`.
    """
    t, cur_c, cur_r = state
    rows: IntArray | None = None
    for _ in range(rounds):
        rem = total - float(np.sum(cur_c))
        if rem <= 0:
            break
        row, treatment, dcost, dgain = _upgrades(R, C, (t, cur_c, cur_r), rem, rows)
        if row.size == 0:
            break
        take = _take_fitting(row, treatment, dcost, dgain, rem)
        who, new_t = row[take], treatment[take]
        t[who], cur_c[who], cur_r[who] = new_t, C[new_t, who], R[new_t, who]
        rows = who  # every other customer's moves no longer fit; the upgraded have new ones
    return t, cur_c, cur_r


def _take_fitting(
    row: IntArray, treatment: IntArray, dcost: FloatArray, dgain: FloatArray, rem: float
) -> IntArray:
    """Walk moves by gain/cost descending, taking each that still fits, one per customer.

    Order: ratio descending, then gain descending, then customer, then treatment. Vectorised as
    repeated fitting prefixes over the shrinking pool. All inputs: (P,); returns positions.
    """
    ratio = dgain / dcost
    keys = (treatment, row, -dgain, -ratio)
    pool, taken = np.arange(row.size), []
    while pool.size:
        take = pool[_best_prefix(ratio[pool], dcost[pool], [k[pool] for k in keys], rem)]
        _, first = np.unique(row[take], return_index=True)  # a customer's best move only
        take = take[np.sort(first)]
        taken.append(take)
        rem -= float(np.sum(dcost[take]))
        pool = pool[~np.isin(row[pool], row[take])]
        pool = pool[dcost[pool] <= rem]
    return np.concatenate(taken) if taken else pool


def _best_prefix(
    ratio: FloatArray, dcost: FloatArray, keys: list[npt.NDArray[Any]], rem: float
) -> IntArray:
    """Positions of the longest prefix in lexsort(keys) order whose cost fits `rem`.

    keys rank by ratio last (primary); only the best few are sorted unless the budget reaches
    further. ratio, dcost: (m,).
    """
    few = 64
    while True:
        if few >= ratio.size:
            sel = np.arange(ratio.size)
        else:  # every candidate at least as good as the few-th best, ties included
            cut = np.partition(-ratio, few - 1)[few - 1]
            sel = np.flatnonzero(-ratio <= cut)
        order = sel[np.lexsort([k[sel] for k in keys])]
        cum = np.cumsum(dcost[order])
        if cum[-1] > rem or sel.size == ratio.size:
            return order[: int(np.searchsorted(cum, rem, side="right"))]
        few *= 8


def _repair(state: State, start: State, total: float) -> State:
    """Undo the least valuable upgrades over a feasible `start` until the exact total fits."""
    t, cur_c, cur_r = state
    while float(np.sum(cur_c)) > total:
        excess = float(np.sum(cur_c)) - total
        up = np.flatnonzero(cur_c > start[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            value = (cur_r[up] - start[2][up]) / (cur_c[up] - start[1][up])
        order = up[np.lexsort((up, value))]
        k = int(np.searchsorted(np.cumsum(cur_c[order] - start[1][order]), excess)) + 1
        undo = order[:k]
        t[undo], cur_c[undo], cur_r[undo] = start[0][undo], start[1][undo], start[2][undo]
    return t, cur_c, cur_r


def total_budget(budget: object, n: int, per_capita: bool) -> float:
    """The total budget of n customers (budget x n when per capita); ValueError if not a
    finite number >= 0. Shared with the chunked solver (app/core/batch.py)."""
    try:
        total = float(budget) * (n if per_capita else 1)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a number, got {budget!r}") from None
    if not np.isfinite(total):
        raise ValueError(f"budget must be finite, got {budget!r}")
    if total < 0:
        raise ValueError(f"budget must be >= 0, got {budget!r}")
    return total


def allocate(revenue: object, cost: object, budget: float, *, per_capita: bool = False) -> Solution:
    """Best one-treatment-per-customer assignment within budget. revenue, cost: (N, K).

    `budget` is the total budget, or the budget per customer when `per_capita` (times N).
    Raises ValueError on bad input and InfeasibleBudget when the budget cannot cover the
    cheapest treatment of every customer.
    """
    R, C = _columns(revenue, cost)
    n = R.shape[1]
    total = total_budget(budget, n, per_capita)

    if n > _SMALL_N:
        lam_floor, start, rows = _bracket(R, C, total)
    else:
        start = _state(R, C, _lexmin(C, -R))
        if float(np.sum(start[1])) > total:
            raise InfeasibleBudget(total, float(np.sum(start[1])))
        top = _state(R, C, _lexmin(-R, C))
        if float(np.sum(top[1])) <= total:
            return _result(top, 0.0, total)
        lam_floor, rows = 0.0, np.arange(n)
    lam, state = _lp_fill(R, C, start, rows, total - float(np.sum(start[1])), lam_floor)
    state = _greedy_fill(R, C, state, total)
    state = _repair(state, start, total)
    return _result(state, lam, total)


def _result(state: State, lam: float, total: float) -> Solution:
    """Package a state with totals recomputed from the chosen entries."""
    t, cur_c, cur_r = state
    spent = float(np.sum(cur_c))
    if spent > total:  # unreachable after _repair; kept as a hard guarantee
        raise AssertionError(f"allocation cost {spent} exceeds budget {total}")
    return Solution(t, float(lam), float(np.sum(cur_r)), spent, total)


def dual_choice(revenue: object, cost: object, lam: float) -> IntArray:
    """Best treatment at multiplier lam: argmax revenue - lam*cost; ties -> lower cost, lower index.

    revenue, cost: (N, K) -> (N,). With this tie rule the spend is non-increasing in lam.
    """
    return dual_chooser(revenue, cost)(lam)


def dual_chooser(revenue: object, cost: object) -> Callable[[float], IntArray]:
    """`dual_choice` for many multipliers on the same predictions (a bisection over lam).

    Validates and lays out the (N, K) matrices once; the returned function maps lam -> (N,).
    """
    R, C = _columns(revenue, cost)

    def choose(lam: float) -> IntArray:
        lam = float(lam)
        if not np.isfinite(lam):
            raise ValueError(f"lam must be finite, got {lam!r}")
        return _lexmin(lam * C - R, C)

    return choose
