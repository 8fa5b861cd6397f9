"""Decision-quality benchmark: does Bi-DFCL earn more revenue than two-stage at equal spend?

Simulator (ground truth known): OBS:RCT ratios 10:1 and 50:1, several seeds, per-capita budgets
at 25/50/75% between the true all-control and all-max-arm spend. For every method: the TRUE
per-capita revenue at each budget when the policy's TRUE spend meets it (mode E on the truth),
its EOM estimate on the randomized test split, budget-curve areas and training wall time.
Hillstrom protocol: the same with EOM only (no truth). Gains are relative to the best two-stage
baseline at each budget, paired by seed, mean and 95% t-interval over seeds.

Two diagnostics ride along on the simulator. `pooled-unconfounded` is tsm-pooled trained on the
same customers logged WITHOUT confounding (the simulator's random stream does not depend on
`bias`, so RCT, test and OBS customers are identical; only the OBS treatments differ): its gain
over pooled is the most any de-biasing method can earn here. `uplift x` is the mean predicted
uplift of the deepest arm over the true one on the test customers (1.00 = unbiased).

    python benchmarks/decision_quality.py                 # full run (see --help for sizes)
    python benchmarks/decision_quality.py --quick         # tiny smoke version (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core import metrics
from training.config import DFCL, METHODS, TWO_STAGE, TrainConfig
from training.data import Table, encode_table, load_dataset
from training.data.simulator import REGIMES, simulate
from training.train import train

RESULTS = Path(__file__).resolve().parent / "results"
QUANTILES = (0.25, 0.5, 0.75)
BUDGET_NAMES = ("low", "mid", "high")
# Every method runs with TrainConfig's defaults (what `dfcl train` ships). Extra labelled runs:
# upper-level variants of Bi-DFCL, and every decision-focused method's phase judged on its own
# ("<label>-raw": keep_warm_start off), which comes from the same training run as <label>.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "bi-dfcl-pifd": ("bi-dfcl", {"upper_loss": "pifd"}),
    "bi-dfcl-aipw": ("bi-dfcl", {"upper_target": "aipw"}),
    "bi-dfcl-ipw": ("bi-dfcl", {"obs_weighting": "ipw"}),
    "bi-dfcl-auto": ("bi-dfcl", {"obs_weighting": "auto"}),  # the default since 2026-12-02
    "bi-dfcl-none": ("bi-dfcl", {"obs_weighting": "none"}),  # the paper; "bi-dfcl" before then
}
RAW = {f"{m}-raw": m for m in (*DFCL, "bi-dfcl", *VARIANTS)}
CEILING = "pooled-unconfounded"  # diagnostic, simulator only (see the module docstring)
Emit = Callable[[dict[str, Any]], None]  # receives each finished record (see Recorder)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _stacked_truth(truth_rev: np.ndarray, truth_cost: np.ndarray) -> metrics.Logged:
    """The truth as a 'perfect RCT': every customer under every arm, p = 1/K.

    With it, metrics' mode-E bisection and EOM give the policy's TRUE per-capita cost and
    revenue, so the truth is evaluated by the very code that evaluates logged data.
    """
    n, k = truth_rev.shape
    treatment = np.repeat(np.arange(k), n)
    propensity = np.full(n * k, 1.0 / k)
    return metrics.Logged.of(treatment, truth_rev.T.ravel(), truth_cost.T.ravel(), propensity)


def _logged(table: Table) -> metrics.Logged:
    return metrics.Logged.of(table.treatment, table.revenue, table.cost, table.propensity)


def evaluate(result: Any, test: Table, truth: metrics.Logged | None,
             budgets: np.ndarray, grid: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """Revenue at the budgets (true and EOM), curves on the grid, areas, for one trained model."""
    x = torch.from_numpy(encode_table(test, result.spec))
    with torch.no_grad():
        rev_hat, cost_hat = (t.numpy().astype(np.float64) for t in result.net(x))
    points = np.concatenate([budgets, grid])
    eom = metrics.budget_curve(rev_hat, cost_hat, _logged(test), points)
    out: dict[str, Any] = {
        "eom_revenue": eom.revenue[: len(budgets)].tolist(),
        "eom_cost": eom.cost[: len(budgets)].tolist(),
        "eom_curve": eom.revenue[len(budgets) :].tolist(),
        "eom_area": metrics.budget_curve(rev_hat, cost_hat, _logged(test), grid).area,
        "val_area": result.card["validation"]["eom_area"],
        "val_revenue": result.card["validation"]["eom_mean_revenue"],
        "selected_phase": result.card["validation"]["selected_phase"],
        "seconds": result.seconds,
    }
    if truth is not None:
        k = rev_hat.shape[1]
        true = metrics.budget_curve(np.tile(rev_hat, (k, 1)), np.tile(cost_hat, (k, 1)), truth,
                                    points)  # fmt: skip
        true_rev = truth.revenue.reshape(k, -1).T  # (N, K) back from the stacked form
        true_uplift = (true_rev[:, 1:] - true_rev[:, :1]).mean(axis=0)
        out |= {
            "uplift_ratio": ((rev_hat[:, 1:] - rev_hat[:, :1]).mean(axis=0) / true_uplift).tolist(),
            "true_revenue": true.revenue[: len(budgets)].tolist(),
            "true_cost": true.cost[: len(budgets)].tolist(),
            "true_curve": true.revenue[len(budgets) :].tolist(),
            "true_area": float(
                np.mean(
                    (true.revenue[len(budgets) :] - true.low.revenue)
                    / (true.high.revenue - true.low.revenue)
                )
            ),  # fmt: skip
        }
    return out


def _config(args: argparse.Namespace, label: str, seed: int, n_obs: int) -> TrainConfig:
    """Benchmark config: every method gets the same number of optimizer steps per epoch."""
    base: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    method, changes = VARIANTS.get(label, (label, {}))
    changes = {**changes, "keep_warm_start": True}  # "-raw" rows come from TrainResult.raw
    base = {**changes, **base}
    if args.quick:
        base = {"epochs": 3, "prediction_epochs": 3, "teacher_epochs": 3, "hidden": (16, 8),
                "rct_upper_batch": 512, "n_cg": 5, **base}  # fmt: skip
    batch = int(base.get("batch_size", TrainConfig().batch_size))
    base.setdefault("steps_per_epoch", max(1, math.ceil(n_obs / batch)))
    cfg = TrainConfig.from_json(base)
    return cfg.replace(method=method, seed=seed)


class Recorder:
    """Collects result records and rewrites the JSON after each one.

    A 10^6-row seed takes most of an hour; a process stopped in seed 2 keeps seed 1 (and every
    finished method) on disk, marked `"complete": false` until the run ends.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header = path, header
        self.records: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._write({"complete": False})

    def finish(self, summary: list[dict[str, Any]]) -> float:
        seconds = time.perf_counter() - self.started
        self._write({"complete": True, "seconds": seconds, "summary": summary})
        return seconds

    def _write(self, extra: dict[str, Any]) -> None:
        payload = {**self.header, **extra, "records": self.records}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=float) + "\n")
        tmp.replace(self.path)  # atomic: a reader never sees half a file


def _run_methods(args: argparse.Namespace, setting: str, seed: int, rct: Table, obs: Table,
                 test: Table, truth: metrics.Logged | None, budgets: np.ndarray,
                 grid: np.ndarray, emit: Emit) -> None:  # fmt: skip
    wanted = [m for m in args.methods if m != CEILING]
    runs = list(dict.fromkeys(RAW.get(m, m) for m in wanted))  # one training per base label
    for label in runs:
        raw = f"{label}-raw" in wanted
        cfg = _config(args, label, seed, obs.n_rows)
        result = train(cfg, rct, obs, progress=False, also_raw=raw)
        outputs = [(label, result)] if label in wanted else []
        if raw:
            assert result.raw is not None
            outputs.append((f"{label}-raw", result.raw))
        for name, res in outputs:
            rec = {"setting": setting, "seed": seed, "method": name, "budgets": budgets.tolist(),
                   **evaluate(res, test, truth, budgets, grid)}  # fmt: skip
            emit(rec)
            shown = rec.get("true_revenue", rec["eom_revenue"])
            print(f"  [{setting} seed {seed}] {name:<16} {res.seconds:6.1f}s  revenue "
                  + " ".join(f"{v:.4f}" for v in shown)
                  + f"  val_rev {rec['val_revenue']:.4f} ({rec['selected_phase']})",
                  flush=True)  # fmt: skip


def simulator_records(args: argparse.Namespace, ratio: int, seed: int, emit: Emit) -> None:
    """Simulate one data set, train every method, evaluate against the ground truth."""
    n_rct = max(args.n_obs // ratio, 20)
    sim_seed = 1000 * ratio + seed + args.seed_offset
    world: dict[str, Any] = {"regime": args.regime}
    if args.bias is not None:
        world["bias"] = args.bias
    if args.deal_targeting is not None:
        world["deal_targeting"] = args.deal_targeting
    if args.deal_response is not None:
        world["deal_response"] = args.deal_response
    sim = simulate(n_obs=args.n_obs, n_rct=n_rct, n_test=args.n_test, seed=sim_seed, **world)
    setting = f"sim {ratio}:1" + ("" if args.regime == "default" else f" {args.regime}")
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(sim.write(Path(tmp) / "data"))
        truth = _stacked_truth(sim.truth_revenue, sim.truth_cost)
        spend = sim.truth_cost.mean(axis=0)
        low, high = float(spend.min()), float(spend.max())
        budgets = low + (high - low) * np.asarray(QUANTILES)
        grid = metrics.budget_grid(low, high, 10)
        _run_methods(args, setting, seed, data.rct, data.obs, data.test, truth, budgets, grid,
                     emit)  # fmt: skip
        if CEILING in args.methods:  # same customers, OBS logged without confounding
            twin = simulate(sim.params, bias=0.0).write(Path(tmp) / "twin")
            twin_data = load_dataset(twin)
            cfg = _config(args, "tsm-pooled", seed, twin_data.obs.n_rows)
            result = train(cfg, twin_data.rct, twin_data.obs, progress=False)
            emit({"setting": setting, "seed": seed, "method": CEILING,
                  "budgets": budgets.tolist(),
                  **evaluate(result, data.test, truth, budgets, grid)})  # fmt: skip
    oracle = [sim.oracle(float(b)).revenue / args.n_test for b in np.concatenate([budgets, grid])]
    emit({"setting": setting, "seed": seed, "method": "oracle",
          "budgets": budgets.tolist(), "true_revenue": oracle[:3],
          "true_curve": oracle[3:]})  # fmt: skip


def hillstrom_records(args: argparse.Namespace, seed: int, emit: Emit) -> None:
    """Hillstrom protocol for one split seed: EOM only."""
    from training.data.hillstrom import HillstromParams, build

    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(build(args.hillstrom, tmp, HillstromParams(seed=seed)))
        spend = [v.cost for v in metrics.constant_policies(_logged(data.test), 3)]
        low, high = min(spend), max(spend)
        budgets = low + (high - low) * np.asarray(QUANTILES)
        grid = metrics.budget_grid(low, high, 10)
        _run_methods(args, "hillstrom", seed, data.rct, data.obs, data.test, None,
                     budgets, grid, emit)  # fmt: skip


def _ci(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% t half-width over seeds."""
    n = len(values)
    if n < 2:
        return float(values.mean()), float("nan")
    t = T975.get(n - 1, 1.96 + 2.5 / (n - 1))
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(n))


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting and method: value and paired gain vs the best two-stage model per budget."""
    rows = []
    for setting in dict.fromkeys(r["setting"] for r in records):
        recs = [r for r in records if r["setting"] == setting]
        key = "true_revenue" if "true_revenue" in recs[0] else "eom_revenue"
        seeds = sorted({r["seed"] for r in recs})
        value = {m: np.array([[r[key] for r in recs if r["method"] == m and r["seed"] == s][0]
                              for s in seeds])
                 for m in dict.fromkeys(r["method"] for r in recs)}  # fmt: skip
        tsm = [m for m in TWO_STAGE if m in value]
        best = [max(tsm, key=lambda m: value[m][:, b].mean()) for b in range(3)] if tsm else []
        for m, v in value.items():
            row: dict[str, Any] = {"setting": setting, "method": m, "metric": key,
                                   "best_two_stage": best}  # fmt: skip
            for b, name in enumerate(BUDGET_NAMES):
                row[name] = float(v[:, b].mean())
                if best:
                    row[f"{name}_gain"] = _ci(v[:, b] / value[best[b]][:, b] - 1.0)
                if "tsm-pooled" in value:  # what de-biasing earned over the pooled model
                    pooled_v = value["tsm-pooled"][:, b]
                    row[f"{name}_vs_pooled"] = _ci(v[:, b] / pooled_v - 1.0)
                    if CEILING in value:  # share of the ceiling's gap (mean over seeds)
                        gap = value[CEILING][:, b].mean() - pooled_v.mean()
                        row[f"{name}_gap_share"] = float((v[:, b].mean() - pooled_v.mean()) / gap)
            mr = [r for r in recs if r["method"] == m]
            cost_key = "true_cost" if key == "true_revenue" else "eom_cost"
            row["overspent"] = [  # runs whose realized spend exceeds the budget (cannot reach it)
                sum(
                    r[cost_key][b] > r["budgets"][b] * (1 + 1e-3) + 1e-9
                    for r in mr
                    if cost_key in r
                )
                for b in range(3)
            ]
            for extra in ("true_area", "eom_area", "val_area", "val_revenue", "seconds"):
                if extra in mr[0]:
                    row[extra] = float(np.mean([r[extra] for r in mr]))
            if "uplift_ratio" in mr[0]:  # deepest arm: predicted over true mean uplift
                row["uplift_x"] = float(np.mean([r["uplift_ratio"][-1] for r in mr]))
            rows.append(row)
        pooled = [r for r in rows if r["setting"] == setting and r["method"] == "tsm-pooled"]
        for row in rows:
            if row["setting"] == setting and pooled and "seconds" in row:
                row["time_x_pooled"] = row["seconds"] / pooled[0]["seconds"]
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    for setting in dict.fromkeys(r["setting"] for r in rows):
        sub = [r for r in rows if r["setting"] == setting]
        what = "TRUE" if sub[0]["metric"] == "true_revenue" else "EOM"
        print(
            f"\n== {setting}: {what} per-capita revenue at equal realized spend; gain vs best "
            f"two-stage per budget ({'/'.join(sub[0]['best_two_stage'])}), mean ± 95% CI =="
        )
        head = f"{'method':<20}" + "".join(f"{n:>26}" for n in BUDGET_NAMES)
        print(
            head + f"{'true area':>10}{'EOM area':>10}{'val area':>10}{'val rev':>10}"
            f"{'uplift x':>9}{'train s':>9}{'x pooled':>9}"
        )
        for r in sub:
            cells = ""
            for n in BUDGET_NAMES:
                g = r.get(f"{n}_gain")
                gain = f"{100 * g[0]:+6.2f}% ±{100 * g[1]:5.2f}" if g else ""
                flag = "*" if r["overspent"][BUDGET_NAMES.index(n)] else " "
                cells += f"{r[n]:>9.4f}{flag}{gain:>16}"
            keys = ("true_area", "eom_area", "val_area", "val_revenue")
            tail = "".join(f"{r[k]:>10.4f}" if k in r else f"{'':>10}" for k in keys)
            tail += f"{r['uplift_x']:>9.2f}" if "uplift_x" in r else f"{'':>9}"
            tail += f"{r['seconds']:>9.1f}" if "seconds" in r else f"{'':>9}"
            tail += f"{r['time_x_pooled']:>9.2f}" if "time_x_pooled" in r else ""
            print(f"{r['method']:<20}{cells}{tail}")
        if "low_vs_pooled" not in sub[0]:
            continue
        shares = "low_gap_share" in sub[0]
        print(
            f"\n   {setting}: gain vs tsm-pooled (paired, mean ± 95% CI)"
            + ("; share of the ceiling gap (pooled-unconfounded − tsm-pooled) captured" * shares)
        )
        for r in sub:
            cells = ""
            for n in BUDGET_NAMES:
                g = r.get(f"{n}_vs_pooled")
                cells += f"{100 * g[0]:+9.2f}% ±{100 * g[1]:5.2f}" if g else f"{'':>17}"
                cells += f"{r[f'{n}_gap_share']:>7.0%}" if shares else ""
            print(f"{r['method']:<20}{cells}")


def print_footnote() -> None:
    print(
        "\n* some seeds' policies overspend that budget (they cannot reach it at any lambda);"
        " their revenue is not comparable. Gains are paired by seed; ± is the 95% t half-width."
    )


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Budget curves (mean over seeds): true revenue on the simulator, EOM on Hillstrom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in records))
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        recs = [r for r in records if r["setting"] == setting]
        key = "true_curve" if "true_curve" in recs[0] else "eom_curve"
        for m in dict.fromkeys(r["method"] for r in recs):
            curves = np.array([r[key] for r in recs if r["method"] == m])
            style = "--" if m in TWO_STAGE else ("-" if m.startswith("bi-dfcl") else ":")
            ax.plot(np.arange(1, curves.shape[1] + 1), curves.mean(axis=0), style, label=m,
                    lw=2.4 if m.startswith("bi-dfcl") else 1.3)  # fmt: skip
        ax.set_title(f"{setting} ({'true' if key == 'true_curve' else 'EOM'} revenue)")
        ax.set_xlabel("budget level (1 = 10% ... 10 = 100% of the spend range)")
        ax.set_ylabel("per-capita revenue")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="run seeds first..first+seeds-1 (split runs)"
    )
    parser.add_argument(
        "--ratios", default="10,50", help="OBS:RCT ratios, comma separated ('' = none)"
    )
    parser.add_argument("--n-obs", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=50_000)
    parser.add_argument(
        "--bias",
        type=float,
        default=None,
        help="simulator confounding (default: the simulator's); diagnostics only",
    )
    parser.add_argument(
        "--regime", default="default", choices=REGIMES, help="simulator regime (see simulator.py)"
    )
    parser.add_argument(
        "--deal-targeting",
        type=float,
        default=None,
        help="deal-seekers regime: logging weight on the hidden trait (default: registered)",
    )
    parser.add_argument(
        "--deal-response",
        type=float,
        default=None,
        help="deal-seekers regime: response logit per unit of the trait (default: registered)",
    )
    parser.add_argument("--methods", default=",".join([*METHODS, *VARIANTS, *RAW, CEILING]))
    parser.add_argument("--config", help="TrainConfig JSON overrides for every method")
    parser.add_argument("--hillstrom", help="Hillstrom CSV; its protocol runs only when given")
    parser.add_argument(
        "--seed-offset",
        type=int,
        default=0,
        help="shift data seeds (development runs for tuning use 100+)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny nets: 1)")
    parser.add_argument("--out", default=str(RESULTS), help="directory for JSON + PNG")
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument(
        "--summarize",
        help="re-print the table of saved result JSONs (comma separated: their records are "
        "pooled, e.g. seeds run in separate processes) and exit",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        pooled: list[dict[str, Any]] = []
        for path in args.summarize.split(","):
            saved = json.loads(Path(path).read_text())
            print(f"command: {saved['command']}")
            pooled += saved["records"]
        print_table(summarize(pooled))
        print_footnote()
        return 0
    if args.quick:
        args.seeds, args.n_obs, args.n_test = min(args.seeds, 2), 2000, 2000
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = [*METHODS, *VARIANTS, *RAW, CEILING]
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {known}")
    torch.set_num_threads(args.threads)
    # the first optimizer of a process imports torch._dynamo (~4 s): pay it before any timing,
    # or whichever method trains first looks slower
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = (
        "decision_quality" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    )
    header = {"command": " ".join(["python", *sys.argv]), "args": vars(args)}
    recorder = Recorder(out / f"{name}.json", header)
    for ratio in (int(r) for r in args.ratios.split(",") if r.strip()):  # "" = Hillstrom only
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            simulator_records(args, ratio, seed, recorder.add)
    if args.hillstrom:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            hillstrom_records(args, seed, recorder.add)
    rows = summarize(recorder.records)
    print_table(rows)
    print_footnote()
    seconds = recorder.finish(rows)
    plot(recorder.records, out / f"{name}.png")
    print(f"\nwrote {out / name}.json and .png in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
