"""Champion/challenger benchmark: does the retrain decision pick the truly better model?

For each seed, run the closed loop (`dfcl loop-demo`, app.jobs.loop_demo) and then re-run
`compare` (app.jobs.retrain) on the job's own held-out explored rows and exported models, once
with the Horvitz-Thompson ("ht") and once with the doubly robust ("dr") estimator. The
simulator's truth says which model really earns more (true revenue at equal true spend), so we
can count how often each estimator's decision is right and how much DR shrinks the paired SE.

    python benchmarks/champion_challenger.py                # 8 seeds, LoopConfig defaults
    python benchmarks/champion_challenger.py --seeds 5 --workdir /tmp/cc   # keep/reuse runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.inference import OnnxModel
from app.jobs.loop_demo import LoopConfig, run
from app.jobs.retrain import compare
from app.jobs.runner import read_settings
from app.tables import RetrainJob

RESULTS = Path(__file__).resolve().parent / "results"
ESTIMATORS = ("ht", "dr")


def true_gain(result: dict[str, Any], budget: float) -> dict[str, Any]:
    """Challenger minus champion TRUE revenue: mean over the budgets where neither model
    overspends, and at the demo budget (NaN there if either overspends)."""
    budgets = np.asarray(result["budgets"])
    diff = np.asarray(result["retrained_revenue"]) - np.asarray(result["first_revenue"])
    valid = ~(np.asarray(result["first_overspends"]) | np.asarray(result["retrained_overspends"]))
    at = int(np.argmin(np.abs(budgets - budget)))
    return {
        "mean": float(diff[valid].mean()) if valid.any() else math.nan,
        "n_budgets": int(valid.sum()),
        "at_budget": float(diff[at]) if valid[at] else math.nan,
    }


def stored_job(settings: Settings, job_id: str) -> RetrainJob:
    """The job's row (params as accepted, comparison as the job decided it)."""
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            job = session.get(RetrainJob, uuid.UUID(job_id))
            if job is None:
                raise RuntimeError(f"retrain job {job_id} not found")
            session.expunge(job)
            return job
    finally:
        engine.dispose()


def one_seed(workdir: Path, cfg: LoopConfig) -> dict[str, Any]:
    """Run (or reuse) the loop for cfg.seed, then compare both models with both estimators."""
    started = time.perf_counter()
    saved = workdir / "loop-result.json"
    if saved.is_file():  # --workdir given and this seed already ran: reuse it
        loop = json.loads(saved.read_text())
        reused = True
    else:
        loop = run(workdir, cfg, lambda m: print(f"  [seed {cfg.seed}] {m}", file=sys.stderr))
        reused = False
    job_dir = workdir / "retrain" / loop["job"]
    settings = read_settings(job_dir)  # exactly what the job process used
    job = stored_job(settings, loop["job"])
    params = dict(job.params)  # holds "margin" (request or DFCL_RETRAIN_MARGIN)
    holdout = job_dir / "data" / "holdout.parquet"
    models_dir = Path(settings.models_dir)
    champion = OnnxModel.load(models_dir / loop["first"])
    challenger = OnnxModel.load(models_dir / loop["retrained"])
    truth = true_gain(loop, cfg.budget)
    row: dict[str, Any] = {
        "seed": cfg.seed,
        "job": loop["job"],
        "first": loop["first"],
        "retrained": loop["retrained"],
        "job_decision": loop["comparison_decision"],
        "job_estimator": (job.comparison or {}).get("estimator"),
        "margin": params["margin"],
        "true_gain": truth["mean"],
        "true_gain_budgets": truth["n_budgets"],
        "true_gain_at_budget": truth["at_budget"],
        "budgets": loop["budgets"],
        "first_revenue": loop["first_revenue"],
        "retrained_revenue": loop["retrained_revenue"],
        "first_overspends": loop["first_overspends"],
        "retrained_overspends": loop["retrained_overspends"],
        "loop_seconds": loop["seconds"],
        "reused_run": reused,
    }
    for name in ESTIMATORS:
        cmp = compare(
            champion,
            challenger,
            holdout,
            settings.model_copy(update={"retrain_estimator": name}),
            params,
        )
        gain, se = cmp.get("revenue_gain", math.nan), cmp.get("revenue_gain_se", math.nan)
        correct = None
        if not math.isnan(truth["mean"]):
            correct = (cmp["decision"] == "activate") == (truth["mean"] > 0)
        row[name] = {
            "decision": cmp["decision"],
            "reason": cmp.get("reason"),
            "holdout_rows": cmp["holdout_rows"],
            "revenue_gain": gain,
            "revenue_gain_se": se,
            "z": gain / se if se > 0 else math.nan,
            "area_gain": cmp.get("area_gain", math.nan),
            "explained_share": cmp.get("explained_share"),
            "correct": correct,
            "sign_right": None if correct is None else (gain > 0) == (truth["mean"] > 0),
        }
        if name == row["job_estimator"]:  # our re-run must reproduce what the job decided
            stored = job.comparison
            row[name]["matches_job"] = cmp["decision"] == stored["decision"] and math.isclose(
                gain, stored["revenue_gain"], rel_tol=1e-6, abs_tol=1e-9
            )
    ht_se, dr_se = row["ht"]["revenue_gain_se"], row["dr"]["revenue_gain_se"]
    row["se_ratio_dr_ht"] = dr_se / ht_se if ht_se > 0 else math.nan
    share = row["dr"]["explained_share"] or {}
    row["explained_share_revenue"] = share.get("revenue", math.nan)
    row["explained_share_cost"] = share.get("cost", math.nan)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def _short(decision: str) -> str:
    return "ACT" if decision == "activate" else "keep"


def _mark(correct: bool | None) -> str:
    return "?" if correct is None else ("ok" if correct else "XX")


def table(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The printed table (one line per seed + summary) and the summary numbers."""
    lines = [
        f"{'seed':>4} {'true gain':>10} {'@budget':>9} {'n_b':>3} | "
        f"{'HT dec':>9} {'gain':>8} {'se':>7} {'z':>6} | "
        f"{'DR dec':>9} {'gain':>8} {'se':>7} {'z':>6} | "
        f"{'se DR/HT':>8} {'expl r/c':>11} {'job':>5} {'rows':>5}"
    ]
    for r in rows:
        cells = []
        for name in ESTIMATORS:
            e = r[name]
            cells.append(
                f"{_short(e['decision']) + ' ' + _mark(e['correct']):>9} "
                f"{e['revenue_gain']:+8.4f} {e['revenue_gain_se']:7.4f} {e['z']:+6.2f}"
            )
        lines.append(
            f"{r['seed']:>4} {r['true_gain']:+10.4f} {r['true_gain_at_budget']:+9.4f} "
            f"{r['true_gain_budgets']:>3} | {cells[0]} | {cells[1]} | "
            f"{r['se_ratio_dr_ht']:8.3f} {r['explained_share_revenue']:5.2f}/"
            f"{r['explained_share_cost']:5.2f} {_short(r['job_decision']):>5} "
            f"{r['dr']['holdout_rows']:>5}"
        )
    judged = [r for r in rows if r["ht"]["correct"] is not None]
    summary: dict[str, Any] = {
        "seeds": len(rows),
        "judged": len(judged),
        "truly_better_challenger": sum(r["true_gain"] > 0 for r in judged),
        "agree": sum(r["ht"]["decision"] == r["dr"]["decision"] for r in rows),
        "median_se_ratio_dr_ht": statistics.median(r["se_ratio_dr_ht"] for r in rows),
        "median_explained_share_revenue": statistics.median(
            r["explained_share_revenue"] for r in rows
        ),
        "median_explained_share_cost": statistics.median(r["explained_share_cost"] for r in rows),
    }
    for name in ESTIMATORS:
        summary[f"{name}_correct"] = sum(bool(r[name]["correct"]) for r in judged)
        summary[f"{name}_sign_right"] = sum(bool(r[name]["sign_right"]) for r in judged)
        summary[f"{name}_activations"] = sum(r[name]["decision"] == "activate" for r in rows)
    lines.append("-" * len(lines[0]))
    n = summary["judged"]
    lines.append(
        f"picks the truly better model: HT {summary['ht_correct']}/{n}, "
        f"DR {summary['dr_correct']}/{n}  (challenger truly better in "
        f"{summary['truly_better_challenger']}/{n}; activations HT {summary['ht_activations']}, "
        f"DR {summary['dr_activations']}; HT and DR agree {summary['agree']}/{len(rows)})"
    )
    lines.append(
        f"sign of estimated gain right: HT {summary['ht_sign_right']}/{n}, "
        f"DR {summary['dr_sign_right']}/{n}"
    )
    lines.append(
        f"median SE ratio DR/HT {summary['median_se_ratio_dr_ht']:.3f}; median explained share "
        f"revenue {summary['median_explained_share_revenue']:.3f}, "
        f"cost {summary['median_explained_share_cost']:.3f}"
    )
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="Seeds 0..N-1.")
    parser.add_argument("--days", type=int, default=None, help="LoopConfig.days.")
    parser.add_argument(
        "--customers-per-day", type=int, default=None, help="LoopConfig.customers_per_day."
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Keep each seed's loop under WORKDIR/seed-S and reuse finished ones (default: a "
        "temporary directory, deleted).",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "champion_challenger.json")
    args = parser.parse_args()
    overrides = {
        k: v
        for k, v in (("days", args.days), ("customers_per_day", args.customers_per_day))
        if v is not None
    }
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cc-bench-") as tmp:
        root = args.workdir or Path(tmp)
        for seed in range(args.seeds):
            cfg = LoopConfig(seed=seed, **overrides)
            rows.append(one_seed(root / f"seed-{seed}", cfg))
            r = rows[-1]
            print(
                f"seed {seed}: true gain {r['true_gain']:+.4f}, HT {r['ht']['decision']}, "
                f"DR {r['dr']['decision']} ({r['seconds']} s)",
                file=sys.stderr,
            )
            text, summary = table(rows)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                json.dumps(
                    {
                        "command": command,
                        "config": {**dataclasses.asdict(LoopConfig(**overrides)), "seed": "0..N-1"},
                        "seconds": round(time.perf_counter() - started, 1),
                        "summary": summary,
                        "rows": rows,
                    },
                    indent=2,
                    default=float,  # numpy scalars
                ).replace("NaN", "null")
                + "\n"
            )
    print(text)
    print(f"wall time {time.perf_counter() - started:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
