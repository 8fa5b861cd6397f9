"""Exact budgeted allocation over a customer table too large to hold at once.

A campaign's customer file is one knapsack: split into requests with proportional budgets it
loses revenue whenever the file is ordered (sorted by history, grouped by region). This module
runs `solver.allocate`'s own method (methods §1) as a few passes over chunks of predictions and
returns the same assignment, with memory bounded by the chunk, not by the file.

Every pass is a pure `map` over one chunk plus an associative `reduce` of the results, so an
engine only decides *where* chunks are mapped: `local_engine` loops over them, the Ray engine
(`app.jobs.ray_engine`) maps them as tasks. The algorithm lives here once.

The passes, in allocate's order:
1. `Totals`: everyone on the cheapest treatment (the start) and on the richest. Start over the
   budget -> `InfeasibleBudget`; richest within it -> that is the answer, multiplier 0.
2. The LP multiplier by radix selection. Each customer's upper hull walked from its start gives
   segments (slope dR/dC > 0, extra cost dC > 0). allocate takes them steepest first until the
   leftover budget runs out; the first that does not fit sets the multiplier. Positive float64
   numbers order like their bit patterns, so `SlopeHistogram` sums dC into 65,536 bins of the
   slope's top 16 bits; the bin where the running sum (steepest first) passes the leftover holds
   the multiplier. The next histogram refines 16 more bits inside that bin, until the bin holds
   at most `COLLECT_LIMIT` segments; `CollectSegments` brings those into memory, where they are
   ordered exactly as allocate orders them (slope descending, then row, then position along the
   hull), which fixes the multiplier and the cut between equal slopes.
3. `LpTotals`: the LP assignment is now a function of each row alone (segments steeper than the
   multiplier, plus equal-slope ones before the cut). The pass sums it and collects round 1 of
   the greedy fill: moves that raise revenue and cost at most what the LP left over.
4. Greedy round 1 runs on those candidates in memory; `GatherRows` fetches the upgraded
   customers' predictions and the later rounds run on them alone, with allocate's functions.
5. Should rounding put the total over budget, `RepairCandidates` lists the upgraded customers
   and the least valuable upgrades are undone, as allocate does.

Memory per pass: one chunk, one 65,536-bin histogram, and what is collected: at most
`COLLECT_LIMIT` segments, the round-1 candidates (moves costing at most the LP's leftover, which
is less than one hull segment: a small share of rows in practice, reported as `n_candidates`),
and the upgraded customers. `Plan.choose` then gives any chunk its treatments for the write pass.

Row keys: each chunk carries the global position of its rows (increasing, disjoint between
chunks); allocate breaks exact ties by row index, this module by that key, so the order of
equal-slope segments is the same as allocate's on the concatenated rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from app.core._types import FloatArray, IntArray
from app.core.solver import (
    _FILL_ROUNDS,
    InfeasibleBudget,
    _greedy_fill,
    _hull,
    _lexmin,
    _take_fitting,
    _upgrades,
    total_budget,
)

BITS = 16  # slope bits resolved per histogram pass
BINS = 1 << BITS
COLLECT_LIMIT = 1 << 18  # segments one bin may hold before they are collected into memory
# Chunk sums add up in another order than allocate's one np.sum, so totals may differ in the
# last bits: a budget equal to the minimum within this relative slack is feasible.
SUM_RTOL = 1e-12

S = TypeVar("S")


@dataclass(frozen=True)
class Chunk:
    """Predictions of consecutive customers: rows (n,) global keys; revenue, cost (n, K)."""

    rows: IntArray
    revenue: FloatArray
    cost: FloatArray
    # Each customer's hull from its start (`hull_of`), if the caller computed it once already:
    # path (K, n), slope and dC (K-1, n). Every pass needs it; recomputing it per pass was most
    # of the solve's time.
    hull: tuple[IntArray, FloatArray, FloatArray] | None = None

    @classmethod
    def of(cls, rows: object, revenue: object, cost: object) -> Chunk:
        """Validate shapes and values once, so every pass can trust the chunk."""
        r = np.asarray(revenue, dtype=np.float64)
        c = np.asarray(cost, dtype=np.float64)
        keys = np.asarray(rows, dtype=np.int64)
        if r.ndim != 2 or r.shape != c.shape or keys.shape != (r.shape[0],):
            raise ValueError(
                f"chunk shapes disagree: rows {keys.shape}, revenue {r.shape}, cost {c.shape}"
            )
        if keys.size and np.any(np.diff(keys) <= 0):
            raise ValueError("chunk row keys must be strictly increasing")
        if not (np.isfinite(r).all() and np.isfinite(c).all()):
            bad = int(np.argmin(np.isfinite(r).all(axis=1) & np.isfinite(c).all(axis=1)))
            raise ValueError(f"non-finite prediction at row {int(keys[bad])}")
        return cls(keys, r, c)

    def columns(self) -> tuple[FloatArray, FloatArray]:
        """Revenue and cost as contiguous (K, n), the layout of the solver's internals."""
        return np.ascontiguousarray(self.revenue.T), np.ascontiguousarray(self.cost.T)

    def take(self, keep: np.ndarray) -> Chunk:
        """The customers where `keep` (a mask or positions), with their cached hulls."""
        hull = None
        if self.hull is not None:
            path, slope, dcost = self.hull
            hull = (path[:, keep], slope[:, keep], dcost[:, keep])
        return Chunk(self.rows[keep], self.revenue[keep], self.cost[keep], hull)

    def segments(self, R: FloatArray, C: FloatArray) -> tuple[IntArray, FloatArray, FloatArray]:
        """The hull from the start: cached if given, else computed from R, C (K, n)."""
        return self.hull if self.hull is not None else _segments(R, C)


def hull_of(revenue: FloatArray, cost: FloatArray) -> tuple[IntArray, FloatArray, FloatArray]:
    """Each customer's hull from its start, for `Chunk.hull`. revenue, cost: (n, K)."""
    return _segments(np.ascontiguousarray(revenue.T), np.ascontiguousarray(cost.T))


class Pass(Protocol[S]):
    """A pure function of one chunk and an associative, commutative merge of its results."""

    def map(self, chunk: Chunk) -> S: ...

    def reduce(self, a: S, b: S) -> S: ...


class Engine(Protocol):
    """Maps a pass over every chunk of one table and reduces the results."""

    def __call__(self, p: Pass[S]) -> S: ...


def tree_reduce(results: Iterable[S], reduce: Callable[[S, S], S]) -> S | None:
    """Merge results in order as a balanced binary tree, holding O(log n) of them at a time.

    Merging each new result into one growing accumulator would copy collected rows (segments,
    candidate moves) once per chunk, quadratic in the number of chunks; here every row is
    copied O(log n) times. Order is kept, so float sums do not depend on the engine.
    """
    stack: list[tuple[int, S]] = []  # (level, result): levels strictly decrease upwards
    for r in results:
        level, item = 0, r
        while stack and stack[-1][0] == level:
            item = reduce(stack.pop()[1], item)
            level += 1
        stack.append((level, item))
    out: S | None = None
    for _, item in reversed(stack):
        out = item if out is None else reduce(item, out)
    return out


def local_engine(chunks: Callable[[], Iterable[Chunk]]) -> Engine:
    """The in-process engine: `chunks()` is called once per pass and must yield the same chunks."""

    class _Local:
        def __call__(self, p: Pass[S]) -> S:
            out = tree_reduce((p.map(chunk) for chunk in chunks()), p.reduce)
            if out is None:
                raise ValueError("the table has no rows")
            return out

    return _Local()


# ---------------------------------------------------------------------------- per-chunk states


def _start(R: FloatArray, C: FloatArray) -> IntArray:
    """allocate's start: lowest cost, then highest revenue, then lowest index. (K, n) -> (n,)."""
    return _lexmin(C, -R)


def _richest(R: FloatArray, C: FloatArray) -> IntArray:
    """allocate's unconstrained best: highest revenue, then lowest cost, then lowest index."""
    return _lexmin(-R, C)


def _segments(R: FloatArray, C: FloatArray) -> tuple[IntArray, FloatArray, FloatArray]:
    """Hull from the start: path (K, n), slope and dC (K-1, n); slope -inf past the hull's end."""
    return _hull(R, C, _start(R, C))


def _pick(R: FloatArray, C: FloatArray, t: IntArray) -> tuple[FloatArray, FloatArray]:
    cols = np.arange(t.size)
    return C[t, cols], R[t, cols]


@dataclass(frozen=True)
class Cut:
    """The LP multiplier and, among segments of exactly that slope, the first one not taken."""

    lam: float
    row: int  # global row key of the first segment not taken
    step: int  # its position along that row's hull


def _lp_choice(chunk: Chunk, R: FloatArray, C: FloatArray, cut: Cut) -> IntArray:
    """Treatments after the LP's whole segments: steeper than lam, or equal and before the cut."""
    path, slope, _ = chunk.segments(R, C)
    rows = chunk.rows[None, :]
    steps = np.arange(slope.shape[0])[:, None]
    before = (rows < cut.row) | ((rows == cut.row) & (steps < cut.step))
    taken = ((slope > cut.lam) | ((slope == cut.lam) & before)).sum(axis=0)
    chosen: IntArray = path[taken, np.arange(chunk.rows.size)]
    return chosen


# ---------------------------------------------------------------------------------- the passes


@dataclass(frozen=True)
class TotalsResult:
    n: int
    start_cost: float
    richest_cost: float
    richest_revenue: float


@dataclass(frozen=True)
class Totals:
    """Pass 1: the number of customers and the cost of the start and of the richest choice."""

    def map(self, chunk: Chunk) -> TotalsResult:
        R, C = chunk.columns()
        start_c, _ = _pick(R, C, _start(R, C))
        rich_c, rich_r = _pick(R, C, _richest(R, C))
        return TotalsResult(
            chunk.rows.size, float(start_c.sum()), float(rich_c.sum()), float(rich_r.sum())
        )

    def reduce(self, a: TotalsResult, b: TotalsResult) -> TotalsResult:
        return TotalsResult(
            a.n + b.n,
            a.start_cost + b.start_cost,
            a.richest_cost + b.richest_cost,
            a.richest_revenue + b.richest_revenue,
        )


def _slope_keys(slope: FloatArray) -> tuple[IntArray, IntArray]:
    """Positions (step, col) of real segments and their slopes' bit patterns (ordered as floats)."""
    step, col = np.nonzero(slope > -np.inf)
    keys = np.ascontiguousarray(slope[step, col]).view(np.int64)
    return np.stack([step, col]), keys


@dataclass(frozen=True)
class Histogram:
    weight: FloatArray  # (BINS,) summed dC per bin
    count: IntArray  # (BINS,) segments per bin


@dataclass(frozen=True)
class SlopeHistogram:
    """Pass 2: dC of segments whose top `known` slope bits equal `prefix`, by the next 16 bits."""

    known: int
    prefix: int

    def map(self, chunk: Chunk) -> Histogram:
        R, C = chunk.columns()
        _, slope, dcost = chunk.segments(R, C)
        (step, col), keys = _slope_keys(slope)
        inside = _inside(keys, self.known, self.prefix)
        bins = (keys[inside] >> (64 - self.known - BITS)) & (BINS - 1)
        weights = dcost[step[inside], col[inside]]
        return Histogram(
            np.bincount(bins, weights=weights, minlength=BINS).astype(np.float64),
            np.bincount(bins, minlength=BINS).astype(np.int64),
        )

    def reduce(self, a: Histogram, b: Histogram) -> Histogram:
        return Histogram(a.weight + b.weight, a.count + b.count)


def _inside(keys: IntArray, known: int, prefix: int) -> np.ndarray:
    if known == 0:
        return np.ones(keys.size, dtype=bool)
    return (keys >> (64 - known)) == prefix  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Segments:
    slope: FloatArray
    dcost: FloatArray
    row: IntArray
    step: IntArray

    def __add__(self, other: Segments) -> Segments:
        return Segments(
            np.concatenate([self.slope, other.slope]),
            np.concatenate([self.dcost, other.dcost]),
            np.concatenate([self.row, other.row]),
            np.concatenate([self.step, other.step]),
        )


@dataclass(frozen=True)
class CollectSegments:
    """Pass 2, last step: every segment whose top `known` slope bits equal `prefix`."""

    known: int
    prefix: int

    def map(self, chunk: Chunk) -> Segments:
        R, C = chunk.columns()
        _, slope, dcost = chunk.segments(R, C)
        (step, col), keys = _slope_keys(slope)
        inside = _inside(keys, self.known, self.prefix)
        s, c = step[inside], col[inside]
        return Segments(slope[s, c], dcost[s, c], chunk.rows[c], s.astype(np.int64))

    def reduce(self, a: Segments, b: Segments) -> Segments:
        return a + b


@dataclass(frozen=True)
class Moves:
    """Candidate or chosen moves: customer row key, new treatment, extra cost, extra revenue."""

    row: IntArray
    treatment: IntArray
    dcost: FloatArray
    dgain: FloatArray

    def __add__(self, other: Moves) -> Moves:
        return Moves(
            np.concatenate([self.row, other.row]),
            np.concatenate([self.treatment, other.treatment]),
            np.concatenate([self.dcost, other.dcost]),
            np.concatenate([self.dgain, other.dgain]),
        )

    def take(self, positions: IntArray) -> Moves:
        return Moves(
            self.row[positions],
            self.treatment[positions],
            self.dcost[positions],
            self.dgain[positions],
        )


@dataclass(frozen=True)
class LpResult:
    cost: float
    revenue: float
    candidates: Moves


@dataclass(frozen=True)
class LpTotals:
    """Pass 3: totals of the LP assignment and the greedy round-1 moves costing <= `bound`."""

    cut: Cut
    bound: float

    def map(self, chunk: Chunk) -> LpResult:
        R, C = chunk.columns()
        t = _lp_choice(chunk, R, C, self.cut)
        cur_c, cur_r = _pick(R, C, t)
        row, treatment, dcost, dgain = _upgrades(R, C, (t, cur_c, cur_r), self.bound, None)
        moves = Moves(chunk.rows[row], treatment.astype(np.int64), dcost, dgain)
        return LpResult(float(cur_c.sum()), float(cur_r.sum()), moves)

    def reduce(self, a: LpResult, b: LpResult) -> LpResult:
        return LpResult(a.cost + b.cost, a.revenue + b.revenue, a.candidates + b.candidates)


@dataclass(frozen=True)
class Gathered:
    row: IntArray  # (m,)
    revenue: FloatArray  # (m, K)
    cost: FloatArray  # (m, K)

    def __add__(self, other: Gathered) -> Gathered:
        return Gathered(
            np.concatenate([self.row, other.row]),
            np.concatenate([self.revenue, other.revenue]),
            np.concatenate([self.cost, other.cost]),
        )


@dataclass(frozen=True)
class GatherRows:
    """The predictions of the customers whose row keys are in `rows` (sorted)."""

    rows: IntArray

    def map(self, chunk: Chunk) -> Gathered:
        hit = _member(chunk.rows, self.rows)
        return Gathered(chunk.rows[hit], chunk.revenue[hit], chunk.cost[hit])

    def reduce(self, a: Gathered, b: Gathered) -> Gathered:
        return a + b


def _member(keys: IntArray, sorted_set: IntArray) -> np.ndarray:
    """Mask of `keys` present in `sorted_set`."""
    if sorted_set.size == 0:
        return np.zeros(keys.size, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, keys), sorted_set.size - 1)
    return sorted_set[pos] == keys  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Upgraded:
    row: IntArray
    value: FloatArray  # extra revenue per extra cost over the start
    extra: FloatArray  # extra cost over the start

    def __add__(self, other: Upgraded) -> Upgraded:
        return Upgraded(
            np.concatenate([self.row, other.row]),
            np.concatenate([self.value, other.value]),
            np.concatenate([self.extra, other.extra]),
        )


@dataclass(frozen=True)
class RepairCandidates:
    """Pass 5 (rounding only): customers whose assignment costs more than their start."""

    plan: Plan

    def map(self, chunk: Chunk) -> Upgraded:
        R, C = chunk.columns()
        t = self.plan.choose(chunk)
        cur_c, cur_r = _pick(R, C, t)
        st_c, st_r = _pick(R, C, _start(R, C))
        up = np.flatnonzero(cur_c > st_c)
        extra = cur_c[up] - st_c[up]
        return Upgraded(chunk.rows[up], (cur_r[up] - st_r[up]) / extra, extra)

    def reduce(self, a: Upgraded, b: Upgraded) -> Upgraded:
        return a + b


# --------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """The global decision, small enough to ship to every chunk of the write pass."""

    budget: float  # total budget
    lam: float  # LP multiplier (0 when the richest assignment fits)
    revenue: float  # total predicted revenue of the assignment
    cost: float  # total predicted cost (<= budget)
    n: int
    cut: Cut | None = None  # None: everyone on the richest treatment
    move_rows: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted
    move_treatment: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    undo_rows: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted
    stats: dict[str, int] = field(default_factory=dict)  # passes and collected sizes

    def choose(self, chunk: Chunk) -> IntArray:
        """The treatment (n,) of each customer of `chunk` in the global solution."""
        R, C = chunk.columns()
        if self.cut is None:
            return _richest(R, C)
        t = _lp_choice(chunk, R, C, self.cut)
        hit = _member(chunk.rows, self.move_rows)
        if hit.any():
            t[hit] = self.move_treatment[np.searchsorted(self.move_rows, chunk.rows[hit])]
        undo = _member(chunk.rows, self.undo_rows)
        if undo.any():
            t[undo] = _start(R, C)[undo]
        return t


def solve(engine: Engine, budget: float, *, per_capita: bool = False) -> Plan:
    """allocate()'s assignment for the table behind `engine`, in passes over its chunks.

    `budget` is the total, or per customer when `per_capita`. Raises ValueError on a bad budget
    and InfeasibleBudget when the cheapest treatments already cost more.
    """
    stats = {"passes": 1}
    totals = engine(Totals())
    total = total_budget(budget, totals.n, per_capita)
    if totals.start_cost > total * (1 + SUM_RTOL):
        raise InfeasibleBudget(total, totals.start_cost)
    if totals.richest_cost <= total:
        return Plan(total, 0.0, totals.richest_revenue, totals.richest_cost, totals.n, stats=stats)

    leftover = max(total - totals.start_cost, 0.0)
    found = _multiplier(engine, leftover, stats)
    if found is None:  # no hull segment anywhere: the start is the richest choice (rounding)
        return Plan(total, 0.0, totals.richest_revenue, totals.richest_cost, totals.n, stats=stats)
    cut, cut_dcost = found

    lp = engine(LpTotals(cut, cut_dcost))
    stats["passes"] += 1
    rem = total - lp.cost
    if rem > cut_dcost:  # rounding left more than the crossing segment: widen the scan
        lp = engine(LpTotals(cut, rem))
        stats["passes"] += 1
    cand = lp.candidates.take(np.flatnonzero(lp.candidates.dcost <= rem))
    stats["n_candidates"] = int(cand.row.size)
    plan_cost, plan_revenue = lp.cost, lp.revenue
    move_rows, move_t = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if rem > 0 and cand.row.size:
        first = cand.take(_take_fitting(cand.row, cand.treatment, cand.dcost, cand.dgain, rem))
        order = np.argsort(first.row)
        first = first.take(order)
        plan_cost += float(first.dcost.sum())
        plan_revenue += float(first.dgain.sum())
        got = engine(GatherRows(first.row))
        stats["passes"] += 1
        g = np.argsort(got.row)
        R_sub = np.ascontiguousarray(got.revenue[g].T)
        C_sub = np.ascontiguousarray(got.cost[g].T)
        sub_c, sub_r = _pick(R_sub, C_sub, first.treatment)
        others = plan_cost - float(sub_c.sum())
        t_sub, c_sub, r_sub = _greedy_fill(
            R_sub, C_sub, (first.treatment.copy(), sub_c.copy(), sub_r.copy()),
            total - others, rounds=_FILL_ROUNDS - 1,
        )  # fmt: skip
        plan_cost = others + float(c_sub.sum())
        plan_revenue += float(r_sub.sum()) - float(sub_r.sum())
        move_rows, move_t = first.row, t_sub
        stats["n_upgraded"] = int(first.row.size)
    plan = Plan(
        total, max(cut.lam, 0.0), plan_revenue, plan_cost, totals.n, cut, move_rows, move_t,
        stats=stats,
    )  # fmt: skip
    if plan.cost > total:
        plan = _repair(engine, plan, total)
    return plan


def _multiplier(engine: Engine, leftover: float, stats: dict[str, int]) -> tuple[Cut, float] | None:
    """Radix-select the first hull segment (steepest first) whose running dC passes `leftover`.

    Returns the cut and that segment's dC (the LP's leftover is below it); None without segments.
    """
    known, prefix, above = 0, 0, 0.0
    while True:
        hist = engine(SlopeHistogram(known, prefix))
        stats["passes"] += 1
        weight = hist.weight[::-1]  # steepest bin first
        running = above + np.cumsum(weight)
        j = int(np.searchsorted(running, leftover, side="right"))
        nonempty = np.flatnonzero(hist.count[::-1])
        if nonempty.size == 0:
            return None
        j = min(j, int(nonempty[-1]))  # rounding may let everything "fit": take the last
        above = above + float(weight[:j].sum())
        prefix = (prefix << BITS) | (BINS - 1 - j)
        known += BITS
        if hist.count[BINS - 1 - j] <= COLLECT_LIMIT or known == 64:
            break
    seg = engine(CollectSegments(known, prefix))
    stats["passes"] += 1
    stats["n_segments_collected"] = int(seg.slope.size)
    order = np.lexsort((seg.step, seg.row, -seg.slope))
    running = above + np.cumsum(seg.dcost[order])
    k = min(int(np.searchsorted(running, leftover, side="right")), order.size - 1)
    i = order[k]
    return Cut(float(seg.slope[i]), int(seg.row[i]), int(seg.step[i])), float(seg.dcost[i])


def _repair(engine: Engine, plan: Plan, total: float) -> Plan:
    """Undo the least valuable upgrades (extra revenue per extra cost) until the total fits."""
    up = engine(RepairCandidates(plan))
    order = np.lexsort((up.row, up.value))
    excess = plan.cost - total
    k = int(np.searchsorted(np.cumsum(up.extra[order]), excess)) + 1
    undo = np.sort(up.row[order[:k]])
    saved = float(up.extra[order[:k]].sum())
    lost = float((up.value[order[:k]] * up.extra[order[:k]]).sum())
    stats = dict(plan.stats, passes=plan.stats["passes"] + 1, n_undone=int(undo.size))
    return Plan(
        plan.budget, plan.lam, plan.revenue - lost, plan.cost - saved, plan.n, plan.cut,
        plan.move_rows, plan.move_treatment, undo, stats,
    )  # fmt: skip
