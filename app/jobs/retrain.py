"""The retraining job (its own process): data from the loop -> train -> register -> compare.

Run as `python -m app.jobs.retrain JOB_ID WORKDIR` (or `dfcl retrain-job`); the service
launches it (app/jobs/runner.py). Steps, each logged to WORKDIR/job.log:

1. Data. Every stored decision with an outcome (and its request features) from allocations made
   by models with the champion's treatments. Explored decisions are randomized: they become RCT
   rows with propensity 1/K (given that a customer was explored, each arm had probability 1/K);
   the others become OBS rows with their recorded propensity. A fixed share of explored decisions
   (chosen by a hash of allocation id and customer id, so the same rows in every job) is held out
   of training for the comparison. Base tables (request or settings) are appended.
2. Train with `training` (Bi-DFCL unless the request says otherwise) and export ONNX.
3. Register the new version; compare it with the champion on the held-out randomized rows: the
   EOM budget-curve area (app.core.metrics, mode E) of both exported models run by onnxruntime,
   on the same rows and budgets. Activate if the challenger wins by more than the margin (or
   `force`). The comparison is stored on the job either way.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.core import metrics
from app.db import begin_write, make_engine, make_sessionmaker
from app.inference import OnnxModel
from app.jobs.runner import read_settings
from app.registry import Registry
from app.services import models
from app.services.retrain import finish
from app.tables import Allocation, Decision, ModelVersion, Outcome, RetrainJob

_HASH_BUCKETS = 10_000


def say(message: str) -> None:
    """One timestamped progress line in job.log."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def loop_rows(session: Session, treatments: list[str]) -> pd.DataFrame:
    """Decisions joined with outcomes (one row each), from models with these treatments."""
    versions = [
        v for v, t in session.execute(select(ModelVersion.version, ModelVersion.treatments))
        if list(t) == treatments
    ]  # fmt: skip
    stmt = (
        select(
            Decision.allocation_id,
            Decision.customer_id,
            Decision.treatment,
            Decision.explored,
            Decision.propensity,
            Decision.features,
            Outcome.revenue,
            Outcome.cost,
        )  # fmt: skip
        .join(
            Outcome,
            (Outcome.allocation_id == Decision.allocation_id)
            & (Outcome.customer_id == Decision.customer_id),
        )
        .join(Allocation, Allocation.id == Decision.allocation_id)
        .where(Allocation.model_version.in_(versions), Decision.features.is_not(None))
    )
    rows = session.execute(stmt).all()
    columns = ["allocation_id", "customer_id", "treatment", "explored", "propensity",
               "features", "revenue", "cost"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def held_out(frame: pd.DataFrame, fraction: float) -> np.ndarray:
    """(N,) bool: a fixed share of rows by a hash of (allocation, customer), stable across jobs."""
    keys = frame[["allocation_id", "customer_id"]].astype(str)
    digest = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    return np.asarray(digest % _HASH_BUCKETS < fraction * _HASH_BUCKETS)


def to_table(frame: pd.DataFrame, columns: list[str], propensity: np.ndarray) -> pd.DataFrame:
    """Loop rows -> the training table contract (raw features, treatment, revenue, cost, p)."""
    features = pd.DataFrame.from_records(frame["features"].tolist(), columns=columns)
    return features.assign(
        treatment=frame["treatment"].to_numpy(np.int64),
        revenue=frame["revenue"].to_numpy(np.float64),
        cost=frame["cost"].to_numpy(np.float64),
        propensity=propensity,
    )


def base_table(path: str | None, kind: str, k: int, columns: list[str]) -> pd.DataFrame | None:
    """A base RCT/OBS table named by the request or settings, checked by training.data."""
    if not path:
        return None
    from training.data import load_table

    table = load_table(Path(path), kind, n_treatments=k, feature_columns=columns)  # type: ignore[arg-type]
    say(f"base {kind} table {path}: {table.n_rows} rows")
    return table.features.assign(
        treatment=table.treatment, revenue=table.revenue, cost=table.cost,
        propensity=table.propensity,
    )  # fmt: skip


def build_data(
    session: Session, settings: Settings, params: dict[str, Any], champion: OnnxModel, out: Path
) -> dict[str, Any]:
    """Write rct/obs/holdout tables and dataset.json into `out`; returns counts."""
    k, columns = champion.n_treatments, champion.spec.raw_columns
    frame = loop_rows(session, list(champion.treatments))
    raw = pd.DataFrame.from_records(frame["features"].tolist(), columns=columns)
    numeric = list(champion.spec.numeric)  # training refuses missing numeric features
    has_all = raw[numeric].notna().all(axis=1).to_numpy(bool)
    if (~has_all).any():
        say(f"{int((~has_all).sum())} decisions lack a numeric feature of {numeric}: left out")
    frame = frame[has_all].reset_index(drop=True)
    explored = frame["explored"].to_numpy(bool)
    holdout = explored & held_out(frame, settings.retrain_holdout_fraction)
    uniform = np.full(len(frame), 1.0 / k)
    parts = {
        "rct": [to_table(frame[explored & ~holdout], columns, uniform[explored & ~holdout])],
        "obs": [to_table(frame[~explored], columns, frame["propensity"].to_numpy()[~explored])],
        "holdout": [to_table(frame[holdout], columns, uniform[holdout])],
    }
    counts: dict[str, Any] = {f"loop_{name}_rows": len(p[0]) for name, p in parts.items()}
    extras = {
        "rct": params.get("base_rct") or settings.retrain_base_rct,
        "obs": params.get("base_obs") or settings.retrain_base_obs,
        "holdout": params.get("eval_data") or settings.retrain_eval_data,
    }
    for name, path in extras.items():
        table = base_table(
            str(path) if path else None, "obs" if name == "obs" else "rct", k, columns
        )
        if table is not None:
            parts[name].append(table)
            counts[f"base_{name}_rows"] = len(table)
            counts[f"base_{name}_path"] = str(path)
    out.mkdir(parents=True, exist_ok=True)
    for name, frames in parts.items():
        merged = pd.concat(frames, ignore_index=True)
        counts[f"{name}_rows"] = len(merged)
        if len(merged):
            merged.to_parquet(out / f"{name}.parquet", index=False)
    categorical = [c for c in columns if c in champion.spec.categorical]
    info = {"treatments": list(champion.treatments), "features": columns,
            "categorical": categorical, "kind": "closed-loop"}  # fmt: skip
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    return counts


def curve_of(
    predictions: tuple[np.ndarray, np.ndarray], logged: metrics.Logged,
    budgets: list[float] | None,
) -> metrics.BudgetCurve:  # fmt: skip
    """Mode-E EOM budget curve of a model's (N, K) predictions of the held-out randomized rows;
    `curve.policy` (B, N) is its policy at each budget's multiplier."""
    return metrics.budget_curve(*predictions, logged, budgets)


def _logged(holdout: pd.DataFrame) -> metrics.Logged:
    """The held-out rows' treatment, revenue, cost and propensity, validated."""
    return metrics.Logged.of(
        holdout["treatment"].to_numpy(np.int64),
        holdout["revenue"].to_numpy(np.float64),
        holdout["cost"].to_numpy(np.float64),
        holdout["propensity"].to_numpy(np.float64),
    )


def compare(
    champion: OnnxModel,
    challenger: OnnxModel,
    holdout_path: Path,
    settings: Settings,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Champion vs challenger on the same held-out rows and budgets; decides activation.

    Activate when forced, or with at least DFCL_RETRAIN_MIN_HOLDOUT rows when the challenger's
    EOM area beats the champion's by more than the margin AND its mean EOM revenue over the grid
    is higher by at least DFCL_RETRAIN_MIN_Z paired standard errors (so noise alone rarely
    replaces a model). DFCL_RETRAIN_ESTIMATOR "dr" (default) makes every estimate doubly
    robust with the champion as the outcome baseline; "ht" is the plain EOM.
    """
    margin, force = float(params["margin"]), bool(params.get("force"))
    n_rows = len(pd.read_parquet(holdout_path)) if holdout_path.is_file() else 0
    result: dict[str, Any] = {"holdout_rows": n_rows, "margin": margin, "force": force}
    if n_rows < 2:
        result["decision"] = "activate" if force else "keep champion"
        result["reason"] = "no held-out randomized rows to compare on"
        return result
    holdout = pd.read_parquet(holdout_path)
    budgets = settings.retrain_budgets
    logged = _logged(holdout)  # validated once, shared by both curves and the paired gain
    result["estimator"] = settings.retrain_estimator
    champion_predictions = champion.predict_columns(holdout)  # (N, K) each, scored once
    if settings.retrain_estimator == "dr":  # the champion never saw these rows: a fair baseline
        logged = logged.with_baseline(*champion_predictions)
        share = metrics.explained_share(logged)
        result["explained_share"] = {"revenue": share[0], "cost": share[1]}
    old = curve_of(champion_predictions, logged, budgets)
    new = curve_of(challenger.predict_columns(holdout), logged, budgets)
    for role, model, c in (("champion", champion, old), ("challenger", challenger, new)):
        result[role] = {
            "version": model.version,
            "eom_area": c.area,
            "mean_revenue": c.mean_revenue,
            "revenue": c.revenue.tolist(),
            "cost": c.cost.tolist(),
            "revenue_se": c.revenue_se.tolist(),
        }
    result["budgets"] = old.budget.tolist()
    gain = new.area - old.area
    paired = metrics.paired_gain(new.policy, old.policy, logged)
    revenue_gain, revenue_gain_se = paired.revenue, paired.revenue_se
    z = revenue_gain / revenue_gain_se if revenue_gain_se > 0 else 0.0
    result |= {"area_gain": gain, "revenue_gain": revenue_gain,
               "revenue_gain_se": revenue_gain_se, "min_z": settings.retrain_min_z}  # fmt: skip
    enough = n_rows >= settings.retrain_min_holdout
    better = enough and gain > margin and z >= settings.retrain_min_z
    result["decision"] = "activate" if (force or better) else "keep champion"
    if force:
        result["reason"] = "forced"
    elif not enough:
        result["reason"] = (
            f"only {n_rows} held-out rows (DFCL_RETRAIN_MIN_HOLDOUT={settings.retrain_min_holdout})"
        )
    else:
        result["reason"] = (
            f"area gain {gain:+.4f} (margin {margin:g}), mean revenue gain {revenue_gain:+.4f} "
            f"= {z:+.2f} paired SE (need {settings.retrain_min_z:g})"
        )
    return result


def run(job_id: uuid.UUID, workdir: Path) -> None:
    """The whole job; any exception marks it failed with the reason."""
    settings = read_settings(workdir)
    engine = make_engine(settings)
    factory = make_sessionmaker(engine)
    registry = Registry(settings.models_dir, threads=settings.inference_threads)
    try:
        with factory() as session, session.begin():
            job = session.get(RetrainJob, job_id)
            if job is None or not job.in_progress:
                raise RuntimeError(f"job {job_id} is not in progress")
            params = dict(job.params)
            champion_version = models.active_version(session)
            if champion_version is None:
                raise RuntimeError("no model is active: the champion defines treatments/features")
            begin_write(session)
            session.execute(
                update(RetrainJob).where(RetrainJob.id == job_id, RetrainJob.in_progress).values(
                    status="running", started_at=datetime.now(UTC), pid=os.getpid(),
                    champion_version=champion_version,
                )
            )  # fmt: skip
        say(f"job {job_id}: method {params['method']}, champion {champion_version}")
        champion = registry.get(champion_version)
        with factory() as session:
            counts = build_data(session, settings, params, champion, workdir / "data")
        say(f"data: {counts}")
        if counts["rct_rows"] == 0:
            raise ValueError(
                "no randomized rows to train on: record outcomes of explored decisions "
                "(exploration_rate > 0) or name a base RCT table"
            )
        from training.pipeline import train_and_export  # torch only from here on

        config_path = workdir / "train-config.json"
        config_path.write_text(json.dumps(params.get("config") or {}))
        data = workdir / "data"
        obs = data / "obs.parquet"
        say("training ...")
        card = train_and_export(
            params["method"], data / "rct.parquet", obs if obs.is_file() else None,
            workdir / "model", config_path, progress=False,
        )  # fmt: skip
        say(f"trained {card.version}: validation {card.validation}")
        with factory() as session, session.begin():
            row = models.register(session, registry, workdir / "model")
            challenger = registry.get(row.version)
            comparison = compare(champion, challenger, data / "holdout.parquet", settings, params)
            say(f"comparison: {comparison['decision']} ({comparison['reason']})")
            activate = comparison["decision"] == "activate"
            if activate:
                models.activate(session, registry, row.version)
            done = finish(
                session, job_id, status="succeeded", new_version=row.version, activated=activate,
                data={**counts, "training_data": card.training_data},
                metrics={"validation": card.validation,
                         **{f"holdout_{r}_eom_area": comparison[r]["eom_area"]
                            for r in ("champion", "challenger") if r in comparison}},
                comparison=comparison,
            )  # fmt: skip
            if not done:
                raise RuntimeError("the job was closed by someone else meanwhile (pid check)")
        say("succeeded")
    except BaseException as exc:
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}".strip()[:2000]
        with factory() as session, session.begin():
            finish(session, job_id, status="failed", error=reason)
        say(f"failed: {reason}")
        raise SystemExit(1) from None
    finally:
        engine.dispose()


if __name__ == "__main__":
    run(uuid.UUID(sys.argv[1]), Path(sys.argv[2]))
