"""Pacing benchmark: simulated arrivals spending one campaign budget (issue 15).

100k simulated customers (training/data/simulator.py ground truth) arrive in batches; each
policy decides each batch with the model's predictions, and outcomes (sampled from the
simulator) arrive `--delay` customers later. Cases:
  a) well-specified: predictions = the true expected revenue and cost;
  b) cost under-predicted by 30 % (predicted cost x 0.7);
  c) non-stationary arrivals: valuable customers come late;
  d) the budget is cut to 80 % halfway through;
  e) (context, no target) a noisy model: truth x unbiased lognormal noise, sd 0.3 per
     customer-arm. Its hindsight gap is mostly the model's: the `offline` column is the
     offline solve on the *predictions* (what any policy with this model could reach).
Policies:
  pace+cal   dual-descent pacing with per-arm realized-cost calibration (app/core/pacing.py);
  pace       the same pacing on predicted cost only (outcomes ignored);
  fixed      the plan's multiplier, never updated (hard stop on predicted cost);
  per-req    today's per-request budgets: each batch gets its share of what is left
             (remaining budget x batch / remaining customers), solved on predicted cost.
The plan (every policy's starting multiplier) is the batch solve on a separate sample of 5,000
expected customers at the per-capita budget.

Reported per case and policy: realized spend / budget (sampled outcomes, all of them in by the
end), true expected revenue, and the hindsight optimum: the offline solve on the true expected
revenue and cost at the policy's own true expected spend. Targets: realized spend <= budget +
1 % always and >= 97 % of it when the budget binds; revenue >= 97 % of hindsight in (a) and
>= 95 % in (b)-(d).

    .venv/bin/python benchmarks/pacing.py            # prints a table, writes JSON
    .venv/bin/python benchmarks/pacing.py --quick    # 20k customers, one seed
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core import pacing  # noqa: E402
from app.core.solver import allocate  # noqa: E402
from training.data.simulator import expected, sample_features, sample_outcomes  # noqa: E402

K = 5
PLAN_SAMPLE = 5_000
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class World:
    """One case: arrival-ordered truth, predictions, sampled realized cost per arm, budgets."""

    name: str
    true_r: np.ndarray  # (N, K) expected revenue
    true_c: np.ndarray  # (N, K) expected cost
    pred_r: np.ndarray  # (N, K) the model's predictions
    pred_c: np.ndarray
    realized_c: np.ndarray  # (N, K) sampled cost if the customer got arm j
    budget: float  # total budget at the start
    budget_after: float  # total budget from the halfway point on
    lam_plan: float


def make_world(case: str, n: int, seed: int, per_capita: float) -> World:
    rng = np.random.default_rng(seed)
    features = sample_features(n, rng)
    true_r, true_c = expected(features, K)
    realized = np.stack(
        [sample_outcomes(features, np.full(n, j), np.random.default_rng(seed + 1), K)[1]
         for j in range(K)], axis=1,
    )  # fmt: skip  # common random numbers: the same purchase and basket draws for every arm

    def predict(r: np.ndarray, c: np.ndarray, g: np.random.Generator) -> tuple[Any, Any]:
        scale = 0.7 if case == "b" else 1.0
        if case != "e":
            return r.copy(), c * scale
        s = 0.3
        noise_r = np.exp(g.normal(-s * s / 2, s, r.shape))
        noise_c = np.exp(g.normal(-s * s / 2, s, c.shape))
        return r * noise_r, c * noise_c * scale

    pred_r, pred_c = predict(true_r, true_c, np.random.default_rng(seed + 2))
    order = np.arange(n)
    if case == "c":  # valuable customers late: rank by best true revenue, with noise
        value = true_r.max(axis=1)
        key = np.argsort(np.argsort(value)) + rng.normal(0, 0.15 * n, n)
        order = np.argsort(key)
    sample = sample_features(PLAN_SAMPLE, np.random.default_rng(seed + 3))
    sr, sc = expected(sample, K)
    plan_r, plan_c = predict(sr, sc, np.random.default_rng(seed + 4))
    lam_plan = allocate(plan_r, plan_c, per_capita * PLAN_SAMPLE).lam
    budget = per_capita * n
    return World(
        case, true_r[order], true_c[order], pred_r[order], pred_c[order], realized[order],
        budget, budget * (0.8 if case == "d" else 1.0), lam_plan,
    )  # fmt: skip


Any = object


def run_policy(world: World, policy: str, batch: int, delay: int, cfg: pacing.PacingConfig) -> dict:
    n = world.true_r.shape[0]
    lam = world.lam_plan
    arms = pacing.ArmSpend.empty(K)
    pending: deque[tuple[int, np.ndarray, np.ndarray]] = deque()  # (ready_at, rows, arms)
    treatment = np.zeros(n, dtype=np.int64)
    spent_pred = 0.0  # per-request policy: predicted cost spent so far
    n_stopped = 0
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        budget = world.budget if lo < n // 2 else world.budget_after
        while pending and pending[0][0] <= lo:  # outcomes that have arrived
            _, rows, t = pending.popleft()
            arms = arms.add_outcomes(t, world.pred_c[rows, t], world.realized_c[rows, t])
        r, c = world.pred_r[lo:hi], world.pred_c[lo:hi]
        if policy == "per-req":
            share = max(budget - spent_pred, 0.0) * (hi - lo) / (n - lo)
            try:
                t = allocate(r, c, share).treatment
            except ValueError:  # infeasible: everyone on the cheapest arm
                t = c.argmin(axis=1)
            spent_pred += float(c[np.arange(hi - lo), t].sum())
        else:
            if policy == "pace+cal":  # realized cost where known, calibrated expectations else
                kappa = pacing.calibrate(arms, cfg.prior_decisions).kappa
                remaining = budget - pacing.committed(arms, kappa)
            else:  # predicted cost only
                kappa = np.ones(K)
                remaining = budget - float(arms.predicted.sum())
            d = pacing.decide(r, c, lam, kappa, remaining)
            t = d.treatment
            n_stopped += int(d.stopped.sum())
            if policy != "fixed":
                lam = pacing.next_multiplier(
                    lam, float(d.cost.sum()), hi - lo, remaining, n - lo, n, lo, cfg
                )
        arms = arms.add_decisions(t, c[np.arange(hi - lo), t])
        treatment[lo:hi] = t
        pending.append((hi + delay, np.arange(lo, hi), t))
    rows = np.arange(n)
    realized = float(world.realized_c[rows, treatment].sum())
    true_cost = float(world.true_c[rows, treatment].sum())
    true_rev = float(world.true_r[rows, treatment].sum())
    hindsight = allocate(world.true_r, world.true_c, true_cost).revenue
    offline = allocate(world.pred_r, world.pred_c, float(world.pred_c[rows, treatment].sum()))
    offline_rev = float(world.true_r[rows, offline.treatment].sum())
    final_budget = world.budget_after
    return {
        "case": world.name, "policy": policy,
        "realized_over_budget": realized / final_budget,
        "true_cost_over_budget": true_cost / final_budget,
        "true_revenue": true_rev, "hindsight_revenue": hindsight,
        "revenue_vs_hindsight": true_rev / hindsight, "final_lam": lam,
        "revenue_vs_offline_on_predictions": true_rev / offline_rev,
        "n_hard_stopped": n_stopped,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--delay", type=int, default=5_000, help="customers until an outcome")
    parser.add_argument("--per-capita", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "pacing.json")
    args = parser.parse_args()
    if args.quick:
        args.n, args.seeds, args.delay = 20_000, 1, 1_000
    cfg = pacing.PacingConfig()
    rows = []
    t0 = time.perf_counter()
    for case in "abcde":
        for seed in range(args.seeds):
            world = make_world(case, args.n, seed, args.per_capita)
            for policy in ("pace+cal", "pace", "fixed", "per-req"):
                rows.append(run_policy(world, policy, args.batch, args.delay, cfg) | {"seed": seed})
    print(f"{args.n:,} customers, batches of {args.batch}, outcome delay {args.delay:,} "
          f"customers, {args.seeds} seed(s), {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print(f"{'case':<5}{'policy':<10}{'realized/B':>12}{'true cost/B':>12}{'rev/hindsight':>15}"
          f"{'rev/offline':>12}{'targets':>10}")  # fmt: skip
    summary = []
    for case in "abcde":
        for policy in ("pace+cal", "pace", "fixed", "per-req"):
            sel = [r for r in rows if r["case"] == case and r["policy"] == policy]
            spend = [r["realized_over_budget"] for r in sel]
            ratio = [r["revenue_vs_hindsight"] for r in sel]
            floor = 0.97 if case == "a" else 0.95
            offline = [r["revenue_vs_offline_on_predictions"] for r in sel]
            ok = max(spend) <= 1.01 and min(spend) >= 0.97 and min(ratio) >= floor
            summary.append({
                "case": case, "policy": policy, "realized_min": min(spend),
                "realized_max": max(spend), "revenue_ratio_min": min(ratio),
                "revenue_ratio_mean": float(np.mean(ratio)), "meets_targets": ok,
            })  # fmt: skip
            print(f"{case:<5}{policy:<10}{min(spend):>6.3f}-{max(spend):<5.3f}"
                  f"{np.mean([r['true_cost_over_budget'] for r in sel]):>12.3f}"
                  f"{min(ratio):>8.3f}-{max(ratio):<6.3f}{min(offline):>11.3f}"
                  f"{('PASS' if ok else 'MISS') if case != 'e' else '-':>10}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "config": cfg.__dict__, "runs": rows,
                                    "summary": summary}, indent=1))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
