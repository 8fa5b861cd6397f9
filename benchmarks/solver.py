"""Solver benchmark: `allocate` against HiGHS solving the LP relaxation of the same instance.

Random diminishing-returns instances (treatment 0 free, revenue concave in cost with noise),
K = 5, a mid budget (half way between the cheapest and the richest assignment's spend). For each
N: best-of-R wall time of `allocate`; wall time of HiGHS `run()` on the LP relaxation (one-hot
equality row per customer + one budget row; model building not timed; interior point, which is
the fastest HiGHS LP solver here, and the default choice, simplex, on small N only) with a
time limit; their ratios (">=" when HiGHS stopped at the limit); the relative gap of
`allocate`'s revenue to the HiGHS LP optimum, and to the Lagrangian dual bound
G(lam) = lam*B + sum_i max_j (r_ij - lam*c_ij), which is >= the LP optimum for any lam >= 0,
so that gap is an upper bound on the true LP gap (available at every size).

    python benchmarks/solver.py                       # N = 10k, 100k, 1M; writes results JSON
    python benchmarks/solver.py --sizes 10000 --repeats 3 --ipm-max-n 10000
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import highspy
import numpy as np

from app.core.solver import allocate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.utils
from tests.utils.highs import knapsack_model  # noqa: E402  (the property tests' reference)

RESULTS = Path(__file__).resolve().parent / "results" / "solver.json"


def instance(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Diminishing returns: cost grows with the arm, revenue ~ log1p(cost), noisy; mid budget."""
    rng = np.random.default_rng(seed)
    cost = np.cumsum(rng.exponential(1.0, (n, k)), axis=1)
    cost[:, 0] = 0.0
    scale = rng.lognormal(0.0, 0.5, (n, 1))
    revenue = rng.uniform(0.0, 2.0, (n, 1)) + scale * np.log1p(cost) * rng.uniform(0.8, 1.2, (n, k))
    rows = np.arange(n)
    richest = cost[rows, revenue.argmax(axis=1)].sum()
    budget = float(cost.min(axis=1).sum() + 0.5 * (richest - cost.min(axis=1).sum()))
    return revenue, cost, budget


def highs_lp(
    revenue: np.ndarray, cost: np.ndarray, budget: float, solver: str, time_limit_s: float
) -> tuple[float | None, float, str]:
    """LP relaxation optimum (None if not optimal), solve wall time and model status."""
    lp = knapsack_model(revenue, cost, budget)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", time_limit_s)
    h.setOptionValue("solver", solver)
    h.passModel(lp)
    start = time.perf_counter()
    h.run()
    elapsed = time.perf_counter() - start
    status = h.getModelStatus()
    optimal = status == highspy.HighsModelStatus.kOptimal
    return (float(h.getInfo().objective_function_value) if optimal else None), elapsed, str(status)


def dual_bound(revenue: np.ndarray, cost: np.ndarray, budget: float, lam: float) -> float:
    """Lagrangian dual G(lam): an upper bound on the LP (hence integer) optimum for lam >= 0."""
    return float(lam * budget + (revenue - lam * cost).max(axis=1).sum())


def run(
    sizes: list[int], k: int, repeats: int, max_n: dict[str, int], limit_s: float
) -> list[dict[str, Any]]:
    """One row per size: timings, ratios and gaps."""
    rows = []
    for n in sizes:
        revenue, cost, budget = instance(n, k, seed=n)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            alloc = allocate(revenue, cost, budget)
            times.append(time.perf_counter() - start)
        assert alloc.cost <= budget
        row: dict[str, Any] = {
            "n": n,
            "k": k,
            "budget": budget,
            "allocate_s": min(times),
            "allocate_runs_s": times,
            "revenue": alloc.revenue,
            "cost": alloc.cost,
            "lam": alloc.lam,
            "highs": {},
        }
        bound = dual_bound(revenue, cost, budget, alloc.lam)
        row["gap_vs_dual_bound"] = (bound - alloc.revenue) / abs(bound)
        for solver, limit_n in max_n.items():
            if n > limit_n:
                row["highs"][solver] = {"status": f"skipped (N > {limit_n})"}
                continue
            lp_opt, highs_s, status = highs_lp(revenue, cost, budget, solver, limit_s)
            done = lp_opt is not None
            row["highs"][solver] = {
                "seconds": highs_s,
                "status": status.removeprefix("HighsModelStatus."),
                "lp_optimum": lp_opt,
                "speedup": highs_s / row["allocate_s"],
                "speedup_is_lower_bound": not done,  # HiGHS stopped at the time limit
            }
            if done and "gap_vs_lp" not in row:
                row["gap_vs_lp"] = (lp_opt - alloc.revenue) / abs(lp_opt)
        rows.append(row)
        print_row(row)
    return rows


def print_row(row: dict[str, Any]) -> None:
    """One table line; HiGHS columns say why they are empty."""
    cells = []
    for solver in ("ipm", "simplex"):  # table columns
        info = row["highs"].get(solver, {"status": "not run"})
        if "seconds" in info:
            bound = ">=" if info["speedup_is_lower_bound"] else ""
            cells.append(
                f"{info['seconds']:9.2f} {bound + format(info['speedup'], '.0f') + 'x':>8}"
            )
        else:
            cells.append(f"{'-':>9} {'-':>8}")
    gap = f"{row['gap_vs_lp']:10.2e}" if "gap_vs_lp" in row else f"{'-':>10}"
    notes = "; ".join(f"{s}: {i['status']}" for s, i in row["highs"].items())
    print(
        f"{row['n']:>9,} {row['k']:>2} {row['allocate_s']:10.4f} {cells[0]} {cells[1]} {gap} "
        f"{row['gap_vs_dual_bound']:10.2e}  {notes}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7, help="allocate runs; best is reported")
    parser.add_argument("--ipm-max-n", type=int, default=1_000_000, help="skip HiGHS IPM above")
    parser.add_argument("--simplex-max-n", type=int, default=10_000, help="skip simplex above")
    parser.add_argument("--highs-time-limit", type=float, default=60.0, help="seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    print(
        f"{'N':>9} {'K':>2} {'allocate_s':>10} {'ipm_s':>9} {'ipm_x':>8} {'simplex_s':>9} "
        f"{'simplex_x':>8} {'gap_vs_lp':>10} {'gap_vs_G':>10}  highs status"
    )
    max_n = {"ipm": args.ipm_max_n, "simplex": args.simplex_max_n}
    rows = run(args.sizes, args.k, args.repeats, max_n, args.highs_time_limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "highspy": importlib.metadata.version("highspy"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": {"allocate_1m_s": 0.3, "speedup_min": 100, "gap_max": 1e-4},
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
