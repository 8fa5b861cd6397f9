"""Does the simulator pose the problem Bi-DFCL solves? Oracle vs random, and how biased OBS is.

Run: .venv/bin/python benchmarks/simulator_report.py [--seed 0] [--hillstrom PATH]

1. True per-capita revenue of the oracle (solver on the true expected values) against random
   targeting at equal spend, at 25%, 50% and 75% of the all-max-arm spend, on the test customers.
2. Effect of each arm vs control (revenue): truth, naive OBS difference in means, OBS linear
   regression adjusting for every feature, OBS inverse-propensity (with the logged propensity),
   and the RCT difference in means -- each with its standard error.
3. Decision quality of a simple two-stage baseline (per-arm OLS "T-learner" on the encoded
   features) trained on RCT, OBS or both: normalised EOM area on the test set and the true
   per-capita revenue of its mode-E policy at three budgets of the default grid, vs the oracle.
4. With --hillstrom: the same naive-vs-RCT comparison on the Hillstrom protocol (no truth there;
   the large RCT-test part is the reference).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.core.features import FeatureSpec
from training.data.simulator import simulate


def diff_in_means(frame: pd.DataFrame, arm: int) -> tuple[float, float]:
    a = frame.loc[frame["treatment"] == arm, "revenue"]
    b = frame.loc[frame["treatment"] == 0, "revenue"]
    return float(a.mean() - b.mean()), float(np.sqrt(a.var() / len(a) + b.var() / len(b)))


def ipw_effect(frame: pd.DataFrame, arm: int) -> float:
    """Hajek arm mean with the logged propensity, minus the control's."""

    def mean(j: int) -> float:
        w = (frame["treatment"] == j) / frame["propensity"]
        return float((w * frame["revenue"]).sum() / w.sum())

    return mean(arm) - mean(0)


def regression_effects(frame: pd.DataFrame, k: int, features: list[str]) -> np.ndarray:
    """OLS of revenue on encoded features + arm dummies: the arm coefficients (K-1,)."""
    spec = FeatureSpec.fit(frame[features])
    x = spec.encode(frame[features]).astype(np.float64)
    dummies = (frame["treatment"].to_numpy()[:, None] == np.arange(1, k)).astype(np.float64)
    design = np.column_stack([np.ones(len(frame)), x, dummies])
    coef, *_ = np.linalg.lstsq(design, frame["revenue"].to_numpy(), rcond=None)
    return coef[-(k - 1) :]


def t_learner(train: pd.DataFrame, test: pd.DataFrame, k: int, spec: FeatureSpec) -> tuple:
    """Per-arm OLS of revenue and cost on encoded features: (N_test, K) predictions each."""

    def design(frame: pd.DataFrame) -> np.ndarray:
        x = spec.encode(frame[spec.raw_columns]).astype(np.float64)
        return np.column_stack([np.ones(len(frame)), x])

    x, x_test = design(train), design(test)
    out = np.zeros((2, len(test), k))
    for j in range(k):
        rows = train["treatment"].to_numpy() == j
        for i, target in enumerate(("revenue", "cost")):
            beta, *_ = np.linalg.lstsq(x[rows], train[target].to_numpy()[rows], rcond=None)
            out[i, :, j] = x_test @ beta
    return out[0], out[1]


def decision_report(sim: Any) -> None:
    from training.data.tables import Table
    from training.evaluate import evaluate_predictions

    k = sim.params.n_treatments
    features = [
        c for c in sim.obs.columns if c not in ("treatment", "revenue", "cost", "propensity")
    ]
    spec = FeatureSpec.fit(sim.rct[features])
    test = sim.test
    logged = [test[c].to_numpy() for c in ("treatment", "revenue", "cost", "propensity")]
    table = Table(test[features], *logged, path=Path("test"), n_treatments=k)
    truth = (sim.truth_revenue, sim.truth_cost)
    print("\n3. two-stage T-learner (OLS per arm) vs oracle, mode-E policies on the test set")
    candidates = {
        "OLS on RCT": t_learner(sim.rct, test, k, spec),
        "OLS on OBS": t_learner(sim.obs, test, k, spec),
        "OLS on both": t_learner(pd.concat([sim.rct, sim.obs]), test, k, spec),
        "oracle": truth,
    }
    for i, (name, (revenue_pred, cost_pred)) in enumerate(candidates.items()):
        ev = evaluate_predictions(table, revenue_pred, cost_pred, truth=truth)
        tr = ev.true_revenue
        if i == 0:
            b = ev.curve.budget
            print(f"{'model':>14} {'EOM area':>9} {'true revenue at b=' + f'{b[2]:.3f}':>24} "
                  f"{f'b={b[4]:.3f}':>8} {f'b={b[7]:.3f}':>8} {'grid mean':>10}")  # fmt: skip
        print(f"{name:>14} {ev.curve.area:9.3f} {tr[2]:24.4f} {tr[4]:8.4f} {tr[7]:8.4f} "
              f"{tr.mean():10.4f}")  # fmt: skip


def simulator_report(seed: int) -> None:
    sim = simulate(seed=seed)
    k = sim.params.n_treatments
    revenue, cost = sim.truth_revenue, sim.truth_cost
    print(f"default simulator (seed {seed}): rct {len(sim.rct)}, obs {len(sim.obs)}, "
          f"test {len(sim.test)}, K={k}, bias {sim.params.bias}")  # fmt: skip
    print("\n1. true per-capita revenue on the test customers at equal spend")
    print(f"{'budget':>8} {'oracle':>9} {'oracle cost':>12} {'random max-arm':>15} "
          f"{'random any-arm':>15} {'oracle gain':>12}")  # fmt: skip
    top = cost[:, -1].mean()
    base = revenue[:, 0].mean()
    for frac in (0.25, 0.5, 0.75):
        budget = frac * top
        oracle_revenue, oracle_cost = sim.true_value(sim.oracle(budget).treatment)
        # random targeting, in expectation: the max arm (or a uniformly drawn treatment arm) for
        # a random share of the customers, the share set so that the spend equals the budget
        max_arm = base + frac * (revenue[:, -1].mean() - base)
        q = min(1.0, budget / cost[:, 1:].mean())
        any_arm = base + q * (revenue[:, 1:].mean() - base)
        gain = oracle_revenue / max(max_arm, any_arm) - 1
        print(f"{budget:8.4f} {oracle_revenue:9.4f} {oracle_cost:12.4f} {max_arm:15.4f} "
              f"{any_arm:15.4f} {gain:+11.1%}")  # fmt: skip

    print("\n2. revenue effect of each arm vs control (per capita)")
    features = [
        c for c in sim.obs.columns if c not in ("treatment", "revenue", "cost", "propensity")
    ]
    true_obs, _ = sim.expected(sim.obs)
    true_rct, _ = sim.expected(sim.rct)
    adjusted = regression_effects(sim.obs, k, features)
    print(f"{'arm':>16} {'truth(OBS)':>11} {'naive OBS':>14} {'bias':>8} {'OBS+features':>13} "
          f"{'OBS IPW':>8} {'truth(RCT)':>11} {'RCT':>14}")  # fmt: skip
    for arm in range(1, k):
        t_obs = float(np.mean(true_obs[:, arm] - true_obs[:, 0]))
        t_rct = float(np.mean(true_rct[:, arm] - true_rct[:, 0]))
        naive, naive_se = diff_in_means(sim.obs, arm)
        rct, rct_se = diff_in_means(sim.rct, arm)
        print(f"{sim.treatments[arm]:>16} {t_obs:11.3f} {naive:8.3f}±{naive_se:5.3f} "
              f"{naive - t_obs:+8.3f} {adjusted[arm - 1]:13.3f} {ipw_effect(sim.obs, arm):8.3f} "
              f"{t_rct:11.3f} {rct:8.3f}±{rct_se:5.3f}")  # fmt: skip
    decision_report(sim)


def hillstrom_report(path: Path) -> None:
    from training.data.hillstrom import TREATMENTS, build

    with tempfile.TemporaryDirectory() as tmp:
        build(path, tmp)
        parts = {n: pd.read_parquet(Path(tmp) / f"{n}.parquet") for n in ("obs", "rct", "test")}
    print(f"\n4. Hillstrom ({', '.join(f'{n} {len(f)}' for n, f in parts.items())} rows): "
          "spend effect vs no e-mail")  # fmt: skip
    print(f"{'arm':>14} {'naive OBS':>14} {'OBS IPW':>8} {'RCT-train':>14} {'RCT-test':>14}")
    for arm in (1, 2):
        cells = [diff_in_means(parts[n], arm) for n in ("obs", "rct", "test")]
        print(f"{TREATMENTS[arm]:>14} {cells[0][0]:8.3f}±{cells[0][1]:5.3f} "
              f"{ipw_effect(parts['obs'], arm):8.3f} {cells[1][0]:8.3f}±{cells[1][1]:5.3f} "
              f"{cells[2][0]:8.3f}±{cells[2][1]:5.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hillstrom", type=Path, default=None, help="path to hillstrom.csv")
    args = parser.parse_args()
    simulator_report(args.seed)
    if args.hillstrom is not None:
        hillstrom_report(args.hillstrom)


if __name__ == "__main__":
    main()
