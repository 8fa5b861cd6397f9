"""Doubly robust vs Horvitz-Thompson evaluation: standard errors on the same randomized rows.

For tsm-pooled and tsm-rct, on the randomized test split: each policy's value at 25/50/75%
budgets (mode E) and the paired difference pooled - rct, by HT and by DR (AIPW) with a baseline
that never saw the rows (another tsm-pooled; on the simulator also the truth, the ideal
baseline), plus bias and coverage against the simulator's truth. Also the validation split's
paired gain as model selection computes it (val_estimator "ht" vs "dr"). The DR cut is bounded
by what the baseline explains: variance falls by about its explained share (a little more, as
HT terms also carry the outcome's mean), so SE ratio ~ sqrt(1 - share); even the truth explains
only ~10% of simulator revenue. Training: default TrainConfig but prediction_epochs 10.

    python benchmarks/dr_validation.py --hillstrom /work/shared/data/hillstrom/hillstrom.csv
    python benchmarks/dr_validation.py --quick          # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core import metrics
from training.config import TrainConfig
from training.data import Table, encode_table, load_dataset
from training.data.simulator import simulate
from training.splits import budget_grid
from training.train import prepare, train

RESULTS = Path(__file__).resolve().parent / "results"
QUANTILES = (0.25, 0.5, 0.75)
BUDGET_NAMES = ("low", "mid", "high")
MODELS = ("tsm-pooled", "tsm-rct")  # paired difference: first minus second
BASELINE_SEED = 100  # the DR baseline: tsm-pooled trained with seed + this
Pair = tuple[np.ndarray, np.ndarray]


def _logged(table: Table) -> metrics.Logged:
    return metrics.Logged.of(table.treatment, table.revenue, table.cost, table.propensity)


def _predict(result: Any, x: np.ndarray) -> Pair:
    with torch.no_grad():
        rev, cost = result.net(torch.from_numpy(x))
    return rev.numpy().astype(np.float64), cost.numpy().astype(np.float64)


def _config(args: argparse.Namespace, method: str, seed: int, n_obs: int) -> TrainConfig:
    """Default TrainConfig, prediction_epochs cut, decision_quality's steps per epoch."""
    base: dict[str, Any] = {"prediction_epochs": args.prediction_epochs}
    if args.quick:
        base["hidden"] = (16, 8)
    base["steps_per_epoch"] = max(1, math.ceil(n_obs / TrainConfig().batch_size))
    return TrainConfig.from_json(base).replace(method=method, seed=seed)


def _train_all(args: argparse.Namespace, seed: int, rct: Table, obs: Table) -> dict[str, Any]:
    out = {}
    for name, method, s in (
        *((m, m, seed) for m in MODELS),
        ("baseline", "tsm-pooled", seed + BASELINE_SEED),
    ):
        out[name] = train(_config(args, method, s, obs.n_rows), rct, obs, progress=False)
        print(f"    trained {name:<10} (seed {s}) in {out[name].seconds:5.1f}s", flush=True)
    return out


def _true_value(truth: Pair | None, policy: np.ndarray) -> float | None:
    if truth is None:
        return None
    return float(truth[0][np.arange(policy.shape[-1]), policy].mean())


def compare(
    preds: dict[str, Pair],
    logged: metrics.Logged,
    budgets: np.ndarray,
    baselines: dict[str, Pair],
    truth: Pair | None,
) -> dict[str, Any]:
    """HT and DR (one per baseline) values and paired differences of MODELS on the same rows.

    Each estimator runs its own mode E (its own cost estimate picks lam); `*_same_se` is the
    estimator's SE of the HT policy, the like-for-like comparison.
    """
    a, b = MODELS
    ht_curves = {m: metrics.budget_curve(*preds[m], logged, budgets) for m in MODELS}
    out: dict[str, Any] = {}
    for est in ("ht", *baselines):
        lg = logged if est == "ht" else logged.with_baseline(*baselines[est])
        curves = (
            ht_curves
            if est == "ht"
            else {m: metrics.budget_curve(*preds[m], lg, budgets) for m in MODELS}
        )
        rec: dict[str, Any] = {"explained": None if est == "ht" else metrics.explained_share(lg)}
        for m in MODELS:
            c = curves[m]
            rec[m] = {
                "value": c.revenue.tolist(),
                "se": c.revenue_se.tolist(),
                "cost": c.cost.tolist(),
                "cost_se": c.cost_se.tolist(),
                "same_se": [metrics.eom(lg, p).revenue_se for p in ht_curves[m].policy],
                "true": [_true_value(truth, p) for p in c.policy],
            }
        paired = [
            metrics.paired_gain(curves[a].policy[i], curves[b].policy[i], lg)
            for i in range(len(budgets))
        ]
        same = [
            metrics.paired_gain(ht_curves[a].policy[i], ht_curves[b].policy[i], lg)
            for i in range(len(budgets))
        ]
        rec["paired"] = {
            "value": [p.revenue for p in paired],
            "se": [p.revenue_se for p in paired],
            "same_se": [p.revenue_se for p in same],
            "true": [
                None
                if truth is None
                else _true_value(truth, curves[a].policy[i])
                - _true_value(truth, curves[b].policy[i])
                for i in range(len(budgets))
            ],
        }
        out[est] = rec
    return out


def validation(
    args: argparse.Namespace,
    seed: int,
    rct: Table,
    obs: Table,
    models: dict[str, Any],
    rct_truth: Pair | None,
) -> dict[str, Any]:
    """Model selection's statistic on the validation rows of `seed`: paired gain of tsm-rct over
    the default tsm-pooled across the validation grid, "ht" vs "dr" (baseline = the default
    model's predictions, as training/selection.py does); simulator: also the truth baseline."""
    cfg = _config(args, "tsm-pooled", seed, obs.n_rows)
    _, _, val, _ = prepare(cfg, rct, obs)
    x = val.x.numpy()
    default, challenger = (_predict(models[m], x) for m in MODELS)
    k = default[0].shape[1]
    grid = budget_grid(val, k, cfg.n_budgets)
    logged = val.logged()
    truth = None
    if rct_truth is not None:  # the validation rows, as prepare() picks them
        order = np.random.default_rng(cfg.seed).permutation(rct.n_rows)
        rows = np.sort(order[: int(round(cfg.val_fraction * rct.n_rows))])
        assert np.array_equal(rct.treatment[rows], logged.treatment)
        truth = (rct_truth[0][rows], rct_truth[1][rows])
    out: dict[str, Any] = {"rows": len(logged)}
    baselines = {"ht": None, "dr": default} | ({"truth": truth} if truth is not None else {})
    for est, base in baselines.items():
        lg = logged if base is None else logged.with_baseline(*base)
        pol_d, pol_c = (metrics.budget_curve(*p, lg, grid).policy for p in (default, challenger))
        gain = metrics.paired_gain(pol_c, pol_d, lg)
        true = None
        if truth is not None:
            true = float(
                np.mean(
                    [
                        _true_value(truth, pc) - _true_value(truth, pd)
                        for pc, pd in zip(pol_c, pol_d, strict=True)
                    ]
                )
            )
        out[est] = {
            "gain": gain.revenue,
            "se": gain.revenue_se,
            "true": true,
            "explained": None if base is None else metrics.explained_share(lg),
        }
    return out


def simulator_records(args: argparse.Namespace, regime: str, seed: int) -> dict[str, Any]:
    sim = simulate(
        n_obs=args.n_obs, n_rct=args.n_rct, n_test=args.n_test, seed=10_000 + seed, regime=regime
    )
    setting = f"sim {regime}"
    print(f"  [{setting} seed {seed}]", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(sim.write(Path(tmp) / "data"))
        models = _train_all(args, seed, data.rct, data.obs)
    spend = sim.truth_cost.mean(axis=0)
    low, high = float(spend.min()), float(spend.max())
    budgets = low + (high - low) * np.asarray(QUANTILES)
    preds = {m: _predict(r, encode_table(data.test, r.spec)) for m, r in models.items()}
    truth = (sim.truth_revenue, sim.truth_cost)
    baselines = {"dr-model": preds["baseline"], "dr-truth": truth}
    test = compare(preds, _logged(data.test), budgets, baselines, truth)
    val = validation(args, seed, data.rct, data.obs, models, sim.expected(sim.rct))
    return {
        "setting": setting,
        "seed": seed,
        "budgets": budgets.tolist(),
        "test": test,
        "validation": val,
        "train_seconds": {m: r.seconds for m, r in models.items()},
    }


def hillstrom_records(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from training.data.hillstrom import HillstromParams, build

    print(f"  [hillstrom seed {seed}]", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(build(args.hillstrom, tmp, HillstromParams(seed=seed)))
        models = _train_all(args, seed, data.rct, data.obs)
    logged = _logged(data.test)
    spend = [v.cost for v in metrics.constant_policies(logged, data.rct.n_treatments)]
    low, high = min(spend), max(spend)
    budgets = low + (high - low) * np.asarray(QUANTILES)
    preds = {m: _predict(r, encode_table(data.test, r.spec)) for m, r in models.items()}
    test = compare(preds, logged, budgets, {"dr-model": preds["baseline"]}, None)
    val = validation(args, seed, data.rct, data.obs, models, None)
    return {
        "setting": "hillstrom",
        "seed": seed,
        "budgets": budgets.tolist(),
        "test": test,
        "validation": val,
        "train_seconds": {m: r.seconds for m, r in models.items()},
    }


def _mean(values: list[float]) -> float:
    """Mean over the finite values (a ratio is NaN when both policies agree on every row)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting, estimator and budget, over seeds: SE ratios vs HT, bias, coverage."""
    rows = []
    for setting in dict.fromkeys(r["setting"] for r in records):
        recs = [r for r in records if r["setting"] == setting]
        for est in recs[0]["test"]:
            for i, budget in enumerate(BUDGET_NAMES):
                row: dict[str, Any] = {
                    "setting": setting,
                    "estimator": est,
                    "budget": budget,
                    "seeds": len(recs),
                }
                for m in MODELS:
                    mine = [r["test"][est][m] for r in recs]
                    ht = [r["test"]["ht"][m] for r in recs]
                    row[f"{m} se"] = _mean([v["se"][i] for v in mine])
                    row[f"{m} se ratio"] = _mean(
                        [_ratio(v["se"][i], h["se"][i]) for v, h in zip(mine, ht, strict=True)]
                    )
                    row[f"{m} same-policy se ratio"] = _mean(
                        [_ratio(v["same_se"][i], h["se"][i]) for v, h in zip(mine, ht, strict=True)]
                    )
                pairs = [r["test"][est]["paired"] for r in recs]
                ht_pairs = [r["test"]["ht"]["paired"] for r in recs]
                row["paired"] = _mean([p["value"][i] for p in pairs])
                row["paired se"] = _mean([p["se"][i] for p in pairs])
                row["paired se ratio"] = _mean(
                    [_ratio(p["se"][i], h["se"][i]) for p, h in zip(pairs, ht_pairs, strict=True)]
                )
                row["paired same-policy se ratio"] = _mean(
                    [
                        _ratio(p["same_se"][i], h["se"][i])
                        for p, h in zip(pairs, ht_pairs, strict=True)
                    ]
                )
                if est != "ht":
                    shares = [r["test"][est]["explained"] for r in recs]
                    row["explained revenue"] = _mean([s[0] for s in shares])
                    row["explained cost"] = _mean([s[1] for s in shares])
                if pairs[0]["true"][i] is not None:  # simulator: bias and 95% coverage
                    items = [
                        (
                            r["test"][est][m]["value"][i],
                            r["test"][est][m]["se"][i],
                            r["test"][est][m]["true"][i],
                        )
                        for r in recs
                        for m in MODELS
                    ]
                    err = np.array([(e - t) / s for e, s, t in items])
                    row["value bias"] = _mean([e - t for e, _, t in items])
                    row["value rmse"] = float(np.sqrt(np.mean([(e - t) ** 2 for e, _, t in items])))
                    row["value z rms"] = float(np.sqrt(np.mean(err**2)))
                    row["value coverage"] = float(np.mean(np.abs(err) <= 1.96))
                    perr = np.array(
                        [_ratio(p["value"][i] - p["true"][i], p["se"][i]) for p in pairs]
                    )
                    row["paired bias"] = _mean([p["value"][i] - p["true"][i] for p in pairs])
                    row["paired coverage"] = _mean(
                        [float(abs(z) <= 1.96) if np.isfinite(z) else math.nan for z in perr]
                    )
                rows.append(row)
    return rows


def summarize_validation(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for setting in dict.fromkeys(r["setting"] for r in records):
        recs = [r["validation"] for r in records if r["setting"] == setting]
        for est in recs[0]:
            if est == "rows":
                continue
            row: dict[str, Any] = {
                "setting": setting,
                "estimator": est,
                "rows": _mean([v["rows"] for v in recs]),
            }
            row["gain"] = _mean([v[est]["gain"] for v in recs])
            row["se"] = _mean([v[est]["se"] for v in recs])
            row["se ratio"] = _mean([_ratio(v[est]["se"], v["ht"]["se"]) for v in recs])
            row["z"] = _mean([_ratio(v[est]["gain"], v[est]["se"]) for v in recs])
            if recs[0][est]["explained"] is not None:
                row["explained revenue"] = _mean([v[est]["explained"][0] for v in recs])
            if recs[0][est]["true"] is not None:
                row["bias"] = _mean([v[est]["gain"] - v[est]["true"] for v in recs])
                row["true gain"] = _mean([v[est]["true"] for v in recs])
            rows.append(row)
    return rows


def _cell(row: dict[str, Any], key: str, fmt: str, width: int) -> str:
    value = row.get(key)
    if value is None:
        return " " * width
    sign = "+" if fmt.startswith("+") else ""
    return format(value, f">{sign}{width}{fmt.lstrip('+')}")


def print_tables(rows: list[dict[str, Any]], val_rows: list[dict[str, Any]]) -> None:
    cols = [  # (key, header, format, width)
        ("tsm-pooled se", "SE pooled", ".4f", 10),
        ("tsm-pooled se ratio", "ratio", ".3f", 7),
        ("tsm-pooled same-policy se ratio", "same-pol", ".3f", 9),
        ("tsm-rct se ratio", "rct ratio", ".3f", 10),
        ("paired", "paired", "+.4f", 9),
        ("paired se", "SE", ".4f", 8),
        ("paired se ratio", "ratio", ".3f", 7),
        ("paired same-policy se ratio", "same-pol", ".3f", 9),
        ("explained revenue", "expl rev", ".3f", 9),
        ("explained cost", "expl cost", ".3f", 10),
        ("value bias", "bias", "+.4f", 9),
        ("value z rms", "z rms", ".2f", 7),
        ("value coverage", "cover", ".2f", 7),
        ("paired bias", "p bias", "+.4f", 9),
        ("paired coverage", "p cover", ".2f", 8),
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        sub = [r for r in rows if r["setting"] == setting]
        print(
            f"\n== {setting}: randomized test split, revenue per capita, mean over "
            f"{sub[0]['seeds']} seeds; ratio = SE / HT SE; paired = pooled - rct =="
        )
        print(f"{'estimator':<10}{'budget':<7}" + "".join(f"{h:>{w}}" for _, h, _, w in cols))
        for r in sub:
            print(
                f"{r['estimator']:<10}{r['budget']:<7}"
                + "".join(_cell(r, k, f, w) for k, _, f, w in cols)
            )
    print(
        "\n== validation split (model selection): paired gain of tsm-rct over the default "
        "tsm-pooled across the validation grid, mean over seeds =="
    )
    vcols = [
        ("rows", "rows", ".0f", 7),
        ("gain", "gain", "+.4f", 9),
        ("se", "SE", ".4f", 8),
        ("se ratio", "ratio", ".3f", 7),
        ("z", "gain/SE", "+.2f", 8),
        ("explained revenue", "expl rev", ".3f", 9),
        ("true gain", "true", "+.4f", 9),
        ("bias", "bias", "+.4f", 9),
    ]
    print(f"{'setting':<18}{'estimator':<10}" + "".join(f"{h:>{w}}" for _, h, _, w in vcols))
    for r in val_rows:
        print(
            f"{r['setting']:<18}{r['estimator']:<10}"
            + "".join(_cell(r, k, f, w) for k, _, f, w in vcols)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--regimes", default="default,deal-seekers", help="'' = none")
    parser.add_argument("--n-obs", type=int, default=200_000)
    parser.add_argument("--n-rct", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=50_000)
    parser.add_argument(
        "--prediction-epochs",
        type=int,
        default=10,
        help="TrainConfig.prediction_epochs (default config: 30)",
    )
    parser.add_argument("--hillstrom", help="Hillstrom CSV; its part runs only when given")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "dr_validation.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.n_obs, args.n_rct, args.n_test = 1, 4000, 2000, 4000
        args.prediction_epochs = 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    records = []
    for regime in (r.strip() for r in args.regimes.split(",") if r.strip()):
        for seed in range(args.seeds):
            records.append(simulator_records(args, regime, seed))
    if args.hillstrom:
        for seed in range(args.seeds):
            records.append(hillstrom_records(args, seed))
    rows, val_rows = summarize(records), summarize_validation(records)
    print_tables(rows, val_rows)
    payload = {
        "command": " ".join(["python", *sys.argv]),
        "seconds": time.perf_counter() - started,
        "args": vars(args),
        "summary": rows,
        "validation_summary": val_rows,
        "records": records,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    print(f"\nwrote {out} in {payload['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
