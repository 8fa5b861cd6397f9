"""Why does (or doesn't) Bi-DFCL beat its warm start? Gate, pseudo-label and gradient diagnostics.

For each data seed, Bi-DFCL is trained once (with the "-raw" selection from the same run) and
the script reports, on the simulator's truth:

- true revenue at equal true spend (25/50/75 % budgets) of the warm start (= tsm-pooled, what
  ships by default), the frozen teacher (the pseudo-labels' source) and the bi-level phase;
- pseudo-label quality: Spearman correlation between each model's predicted and the true
  uplift of every treated arm over control on the test customers (within-arm ranking is what
  the budget multiplier cannot fix);
- per bi-level epoch: mean teacher share of the pseudo-labels (the bridge's gates), the cosine
  between successive meta-gradients (near 0: the upper level's signal is batch noise), and the
  validation paired gain over the warm start with its SE (what selection sees), and the mean
  upper-level loss (the decision loss on the upper fold's RCT rows, in-sample: falling while
  true revenue does not rise means the upper level fits that fold's noise).

Development runs (anything that informs a default) use --seed-offset 100 and may pass TrainConfig
overrides with --config.

    python benchmarks/bidfcl_diagnostics.py --regime deal-seekers --n-obs 200000 --seeds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from app.core import metrics
from training import bidfcl
from training.config import TrainConfig
from training.data import encode_table, load_dataset
from training.data.simulator import REGIMES, simulate
from training.nets import OutcomeNet
from training.train import train

RESULTS = Path(__file__).resolve().parent / "results"
QUANTILES = (0.25, 0.5, 0.75)


def _bench() -> Any:
    """benchmarks/decision_quality.py as a module (its truth helpers)."""
    path = Path(__file__).resolve().parent / "decision_quality.py"
    spec = importlib.util.spec_from_file_location("decision_quality", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _true_revenue(net: OutcomeNet, x: torch.Tensor, truth: metrics.Logged,
                  budgets: np.ndarray) -> tuple[list[float], np.ndarray]:  # fmt: skip
    """True per-capita revenue at equal true spend, and the predictions (N, K) of revenue."""
    with torch.no_grad():
        rev, cost = (t.numpy().astype(np.float64) for t in net(x))
    k = rev.shape[1]
    curve = metrics.budget_curve(np.tile(rev, (k, 1)), np.tile(cost, (k, 1)), truth, budgets)
    return curve.revenue.tolist(), rev


def _uplift_rank_corr(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over treated arms of Spearman corr(predicted uplift, true uplift) over customers."""
    corrs = []
    for arm in range(1, pred.shape[1]):
        a = pd.Series(pred[:, arm] - pred[:, 0]).rank()
        b = pd.Series(true[:, arm] - true[:, 0]).rank()
        corrs.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(corrs))


def run_seed(args: argparse.Namespace, seed: int, bench: Any) -> dict[str, Any]:
    n_rct = args.n_obs // args.ratio
    data_seed = 1000 * args.ratio + seed + args.seed_offset
    sim = simulate(n_obs=args.n_obs, n_rct=n_rct, n_test=args.n_test, seed=data_seed,
                   regime=args.regime)  # fmt: skip
    teachers: list[OutcomeNet] = []
    original = bidfcl._teacher

    def capture(*a: Any) -> OutcomeNet:
        teachers.append(original(*a))
        return teachers[-1]

    out: dict[str, Any] = {"seed": seed}
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(sim.write(Path(tmp) / "data"))
        truth = bench._stacked_truth(sim.truth_revenue, sim.truth_cost)
        spend = sim.truth_cost.mean(axis=0)
        budgets = spend.min() + (spend.max() - spend.min()) * np.asarray(QUANTILES)
        batch = TrainConfig().batch_size
        overrides = json.loads(Path(args.config).read_text()) if args.config else {}
        cfg = TrainConfig.from_json({"upper_target": args.upper_target,
                                     "steps_per_epoch": math.ceil(args.n_obs / batch),
                                     **overrides, "method": "bi-dfcl", "seed": seed})  # fmt: skip
        bidfcl._teacher = capture  # type: ignore[assignment]
        try:
            result = train(cfg, data.rct, data.obs, progress=False, also_raw=True)
        finally:
            bidfcl._teacher = original  # type: ignore[assignment]
        assert result.raw is not None
        x = torch.from_numpy(encode_table(data.test, result.spec))
        models = {"shipped": result.net, "teacher": teachers[0], "bi-level": result.raw.net}
        for name, net in models.items():
            revenue, pred = _true_revenue(net, x, truth, budgets)
            corr = _uplift_rank_corr(pred, sim.truth_revenue)
            out[name] = {"true_revenue": revenue, "uplift_rank_corr": corr}
        out["selected"] = result.card["validation"]["selected_phase"]
        out["raw_selected"] = result.raw.card["validation"]["selected_phase"]
        out["epochs"] = [
            {key: row.get(key) for key in ("phase", "gate_revenue", "gate_cost", "grad_cosine",
                                           "upper_loss", "upper_skipped", "val_gain",
                                           "val_gain_se")}
            for row in result.history if row["phase"] == "bi-dfcl"
        ]  # fmt: skip
        out["teacher_rows"] = [
            {key: row.get(key) for key in ("phase", "val_gain", "val_gain_se")}
            for row in result.history if row["phase"].startswith("teacher")
        ]  # fmt: skip
        out["seconds"] = result.seconds
    return out


def print_seed(rec: dict[str, Any]) -> None:
    base = np.asarray(rec["shipped"]["true_revenue"])
    print(f"\n== seed {rec['seed']}: shipped = {rec['selected']}, bi-level selection = "
          f"{rec['raw_selected']}, {rec['seconds']:.0f} s ==")  # fmt: skip
    print(f"{'model':<10}{'low':>10}{'mid':>10}{'high':>10}   gain vs shipped (%)        "
          "uplift rank corr")  # fmt: skip
    for name in ("shipped", "teacher", "bi-level"):
        rev = np.asarray(rec[name]["true_revenue"])
        gain = " ".join(f"{100 * g:+6.2f}" for g in rev / base - 1)
        print(f"{name:<10}" + "".join(f"{v:>10.4f}" for v in rev)
              + f"   {gain:<26}{rec[name]['uplift_rank_corr']:.3f}")  # fmt: skip
    print(f"{'epoch':>5}{'gate rev':>10}{'gate cost':>10}{'grad cos':>10}{'upper loss':>11}"
          f"{'val gain':>10}{'SE':>8}")  # fmt: skip
    for i, row in enumerate(rec["epochs"]):
        print(f"{i:>5}{row['gate_revenue']:>10.3f}{row['gate_cost']:>10.3f}"
              f"{row['grad_cosine']:>10.3f}{row.get('upper_loss') or 0:>11.4f}"
              f"{row['val_gain'] or 0:>10.4f}{row['val_gain_se'] or 0:>8.4f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regime", default="deal-seekers", choices=REGIMES)
    parser.add_argument("--n-obs", type=int, default=200_000)
    parser.add_argument("--ratio", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--upper-target", default="ipw", choices=("ipw", "aipw"))
    parser.add_argument("--seed-offset", type=int, default=0, help="development runs: 100+")
    parser.add_argument("--config", help="TrainConfig JSON overrides (development runs)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # pay the first-optimizer import
    bench = _bench()
    started = time.perf_counter()
    records = []
    for seed in range(args.seeds):
        records.append(run_seed(args, seed, bench))
        print_seed(records[-1])
    name = "bidfcl_diagnostics" + (f"_{args.tag}" if args.tag else "")
    payload = {"command": " ".join(["python", *sys.argv]), "args": vars(args),
               "seconds": time.perf_counter() - started, "records": records}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    print(f"\nwrote {RESULTS / name}.json in {payload['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
