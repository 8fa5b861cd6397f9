"""Chunked split vs one global solve: what splitting a campaign file into requests costs.

A user without campaign-scale allocation cuts the customer file into requests of `--chunk`
customers and gives each a budget proportional to its size. Every chunk is then solved exactly
(`app.core.solver.allocate`), but the multiplier differs between chunks, so the split is worse
than one global `allocate` on all customers at the same total budget. How much depends on the
order of the file:

- random: chunks are random samples, their multipliers nearly agree;
- sorted by history: a database export ordered by purchase history (each chunk holds one value
  band; low-value chunks overspend, high-value chunks are starved);
- grouped by channel + region: an export grouped by a categorical (phone customers have a far
  higher contact cost than web customers, yet the same budget per head).

Predictions are the simulator's TRUE expected revenue and cost (heterogeneous, heavy-tailed
baskets, sleeping dogs), so "revenue" is the true expected revenue of the decisions. Budgets are
per capita at 25/50/75 % between the all-control spend and the richest assignment's spend. The
row "exact chunked" is `app.core.batch.solve` on the same 10k chunks: it must equal the global
solve (relative difference ~1e-12), which is what the campaign-scale job runs.

    python benchmarks/batch_split.py                     # N = 200k, writes results/batch_split.json
    python benchmarks/batch_split.py --n 1000000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core import batch  # noqa: E402
from app.core.solver import allocate  # noqa: E402
from training.data.simulator import expected, sample_features  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "batch_split.json"
ORDERS = ("random", "sorted_history", "grouped_channel_region")
BUDGET_LEVELS = (0.25, 0.5, 0.75)


def order_of(kind: str, features: Any, rng: np.random.Generator) -> np.ndarray:
    """Row order of the file as exported: random, sorted by history, grouped by categoricals."""
    n = len(features)
    shuffled = rng.permutation(n)  # ties inside a group in random order
    if kind == "random":
        return shuffled
    if kind == "sorted_history":
        h = features["history"].to_numpy()[shuffled]
        return shuffled[np.argsort(h, kind="stable")]
    if kind == "grouped_channel_region":
        ch = features["channel"].to_numpy()[shuffled]
        rg = features["region"].to_numpy()[shuffled]
        return shuffled[np.lexsort((rg, ch))]
    raise ValueError(kind)


def split_revenue(
    revenue: np.ndarray, cost: np.ndarray, order: np.ndarray, chunk: int, budget: float
) -> tuple[float, float, float, float]:
    """Chunks in `order`, each with budget * n_chunk / N: revenue, cost, min and max lam."""
    n = revenue.shape[0]
    rev = cst = 0.0
    lams = []
    for s in range(0, n, chunk):
        idx = order[s : s + chunk]
        sol = allocate(revenue[idx], cost[idx], budget * idx.size / n)
        rev += sol.revenue
        cst += sol.cost
        lams.append(sol.lam)
    return rev, cst, float(min(lams)), float(max(lams))


def exact_chunked(revenue: np.ndarray, cost: np.ndarray, chunk: int, budget: float) -> batch.Plan:
    """app.core.batch.solve over chunks of the file (exact: must equal the global allocate)."""
    n = revenue.shape[0]

    def chunks() -> Any:
        for s in range(0, n, chunk):
            rows = np.arange(s, min(s + chunk, n))
            yield batch.Chunk.of(rows, revenue[rows], cost[rows])

    return batch.solve(batch.local_engine(chunks), budget)


def run(n: int, chunk: int, seeds: list[int], levels: tuple[float, ...]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        features = sample_features(n, rng)
        revenue, cost = expected(features, 5)
        cols = np.arange(n)
        control_rev = float(revenue[:, 0].sum())
        start_cost = float(cost.min(axis=1).sum())
        richest = revenue.argmax(axis=1)
        rich_cost = float(cost[cols, richest].sum())
        for level in levels:
            budget = start_cost + level * (rich_cost - start_cost)
            t0 = time.perf_counter()
            glob = allocate(revenue, cost, budget)
            global_s = time.perf_counter() - t0
            uplift = glob.revenue - control_rev
            base = {"seed": seed, "n": n, "chunk": chunk, "budget_level": level,
                    "budget_total": budget, "budget_per_capita": budget / n,
                    "global_revenue": glob.revenue, "global_cost": glob.cost,
                    "global_lam": glob.lam, "global_s": global_s,
                    "control_revenue": control_rev}  # fmt: skip
            t0 = time.perf_counter()
            plan = exact_chunked(revenue, cost, chunk, budget)
            exact_s = time.perf_counter() - t0
            rows.append({
                **base, "order": "exact_chunked(app.core.batch)", "revenue": plan.revenue,
                "cost": plan.cost, "rel_revenue_pct": 100 * (plan.revenue / glob.revenue - 1),
                "rel_uplift_pct": 100 * (plan.revenue - glob.revenue) / uplift,
                "lam_min": plan.lam, "lam_max": plan.lam, "seconds": exact_s,
                "passes": plan.stats.get("passes"),
            })  # fmt: skip
            for kind in ORDERS:
                order = order_of(kind, features, np.random.default_rng(seed + 1000))
                t0 = time.perf_counter()
                rev, cst, lo, hi = split_revenue(revenue, cost, order, chunk, budget)
                rows.append({
                    **base, "order": kind, "revenue": rev, "cost": cst,
                    "rel_revenue_pct": 100 * (rev / glob.revenue - 1),
                    "rel_uplift_pct": 100 * (rev - glob.revenue) / uplift,
                    "lam_min": lo, "lam_max": hi, "seconds": time.perf_counter() - t0,
                })  # fmt: skip
    return rows


HEADER = (
    f"{'seed':>4} {'budget':>6} {'B/cap':>6} {'order':<30} {'revenue':>14} {'vs global %':>12} "
    f"{'of uplift %':>11} {'lam min..max':>17} {'s':>6}"
)


def _pct(x: float) -> str:
    return f"{x:+.1e}" if 0 < abs(x) < 1e-3 else f"{x:+.4f}"


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(HEADER)
    for r in rows:
        print(
            f"{r['seed']:>4} {r['budget_level']:>6.0%} {r['budget_per_capita']:>6.3f} "
            f"{r['order']:<30} {r['revenue']:>14,.1f} {_pct(r['rel_revenue_pct']):>12} "
            f"{r['rel_uplift_pct']:>+11.3f} {r['lam_min']:>8.4f}..{r['lam_max']:<7.4f} "
            f"{r['seconds']:>6.2f}",
            flush=True,
        )


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean relative revenue (%) per order and budget level over seeds."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["order"], {}).setdefault(f"{r['budget_level']:.2f}", [])  # type: ignore[arg-type]
        out[r["order"]][f"{r['budget_level']:.2f}"].append(r["rel_revenue_pct"])  # type: ignore[attr-defined]
    return {o: {b: float(np.mean(v)) for b, v in d.items()} for o, d in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=float, default=200_000, help="Customers (e.g. 2e5).")
    p.add_argument("--chunk", type=int, default=10_000, help="Customers per request.")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    rows = run(int(args.n), args.chunk, args.seeds, BUDGET_LEVELS)
    print(f"chunked split vs global allocate, N = {int(args.n):,}, chunks of {args.chunk:,}, K = 5")
    print_rows(rows)
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "predictions": "simulator true expected revenue/cost (training.data.simulator.expected)",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary_rel_revenue_pct": summary(rows),
                                    "rows": rows}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
