"""Retraining jobs end to end: loop data -> job process -> new version -> comparison -> serving."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import make_engine
from app.inference import OnnxModel
from app.jobs.retrain import compare
from app.tables import RetrainJob

TINY_TRAINING = {
    "epochs": 2, "prediction_epochs": 2, "teacher_epochs": 1, "hidden": [8], "batch_size": 64,
    "n_cg": 2, "assumed_steps": 1, "upper_every": 2,
}  # fmt: skip


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """Small hold-out minimum so a few hundred logged customers can activate a model."""
    return settings.model_copy(
        update={"retrain_dir": tmp_path / "retrain", "retrain_min_holdout": 20}
    )


def _outcomes(people: list[dict[str, Any]], decisions: list[dict[str, Any]], seed: int) -> Any:
    """Synthetic observed outcomes: arm 1 pays off for recent customers, arm 2 costs most."""
    rng = np.random.default_rng(seed)
    recency = np.array([p["features"]["recency"] for p in people], dtype=float)
    t = np.array([d["treatment"] for d in decisions])
    lift = np.where(t == 1, 3.0 * (recency < 6), 0.0) + np.where(t == 2, 1.0, 0.0)
    revenue = np.maximum(rng.normal(2.0 + lift, 1.0), 0.0).round(2)
    cost = (np.array([0.1, 1.0, 2.0])[t] * rng.uniform(0.8, 1.2, len(t))).round(3)
    return [{"customer_id": d["customer_id"], "revenue": float(r), "cost": float(c)}
            for d, r, c in zip(decisions, revenue, cost, strict=True)]  # fmt: skip


def _feed_loop(client: TestClient, customers: Any, days: int = 3, n: int = 200) -> None:
    for day in range(days):
        people = customers(n, seed=10 + day, prefix=f"d{day}-")
        body = {"budget": 2.0, "per_capita": True, "customers": people,
                "exploration_rate": 0.5, "seed": day}  # fmt: skip
        r = client.post("/v1/allocations", json=body)
        assert r.status_code == 201, r.text
        alloc = r.json()
        outcomes = _outcomes(people, alloc["decisions"], day)
        r = client.post(f"/v1/allocations/{alloc['id']}/outcomes", json={"outcomes": outcomes})
        assert r.status_code == 200, r.text


def _wait(client: TestClient, job_id: str, timeout_s: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/retrain/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_retraining_end_to_end(client: TestClient, customers: Any) -> None:
    _feed_loop(client, customers)
    r = client.post("/v1/retrain", json={"config": TINY_TRAINING, "force": True})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["params"]["method"] == "bi-dfcl"
    second = client.post("/v1/retrain", json={"config": TINY_TRAINING})
    assert second.status_code == 409 and job_id in second.json()["detail"]
    job = _wait(client, job_id)
    assert job["status"] == "succeeded", (job["error"], job["log_tail"])
    assert job["champion_version"] == "tiny-v1" and job["activated"] is True
    version = job["new_version"]
    data = job["data"]
    assert data["rct_rows"] > 100 and data["obs_rows"] > 100 and data["holdout_rows"] >= 20
    assert set(data["training_data"]) == {"rct", "obs"}  # file fingerprints from model.json
    assert len(data["training_data"]["rct"]["sha256"]) == 64
    comparison = job["comparison"]
    assert comparison["decision"] == "activate" and comparison["reason"] == "forced"
    assert comparison["champion"]["version"] == "tiny-v1"
    assert comparison["challenger"]["version"] == version
    assert len(comparison["budgets"]) == 10
    assert np.isfinite(
        [comparison["champion"]["eom_area"], comparison["challenger"]["eom_area"]]
    ).all()
    assert job["metrics"]["holdout_challenger_eom_area"] == comparison["challenger"]["eom_area"]
    assert any("succeeded" in line for line in job["log_tail"])
    # Registered, active, and serving new allocations.
    versions = {v["version"]: v for v in client.get("/v1/models").json()}
    assert versions[version]["is_active"] and versions[version]["method"] == "bi-dfcl"
    r = client.post("/v1/allocations", json={"budget": 50.0, "customers": customers(5)})
    assert r.status_code == 201 and r.json()["model_version"] == version
    # The finished job no longer blocks a new one.
    assert client.get("/v1/retrain").json()[0]["id"] == job_id


def test_failed_job_is_marked_and_serving_continues(
    client: TestClient, customers: Any, tmp_path: Path
) -> None:
    _feed_loop(client, customers, days=1, n=40)
    # A missing table is refused before the 202 (test_validation_retrain.py); a table that
    # vanishes after it is accepted fails the job, which must never take the service down.
    table = tmp_path / "rct.csv"
    table.write_text("recency,history,channel,treatment,revenue,cost\n1,2.0,Web,0,1,1\n")
    r = client.post("/v1/retrain", json={"base_rct": str(table)})
    assert r.status_code == 202, r.text
    table.unlink()
    job = _wait(client, r.json()["id"], 120.0)
    assert job["status"] == "failed" and job["new_version"] is None
    assert "rct.csv" in job["error"]  # admin key: the path is shown
    assert any("Traceback" in line for line in job["log_tail"])
    assert client.get("/readyz").json()["model_version"] == "tiny-v1"
    r = client.post("/v1/allocations", json={"budget": 50.0, "customers": customers(5)})
    assert r.status_code == 201 and r.json()["model_version"] == "tiny-v1"
    assert client.get(f"/v1/retrain/{uuid.uuid4()}").status_code == 404


def test_job_whose_process_died_is_failed(client: TestClient, settings: Settings) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job_id = uuid.uuid4()
    engine = make_engine(settings)
    with Session(engine) as session, session.begin():
        session.add(RetrainJob(
            id=job_id, status="running", in_progress=True, created_at=datetime.now(UTC),
            pid=dead.pid, params={}, workdir=str(settings.retrain_dir / str(job_id)),
        ))  # fmt: skip
    engine.dispose()
    assert client.post("/v1/retrain", json={}).status_code in (202, 409)  # frees the slot
    job = client.get(f"/v1/retrain/{job_id}").json()
    assert job["status"] == "failed" and f"pid {dead.pid}" in job["error"]


def test_champion_challenger_decision(model_sources: dict[str, Path], tmp_path: Path) -> None:
    """The comparison runs both exported models on the same held-out rows and budgets."""
    rng = np.random.default_rng(0)
    n = 400
    holdout = pd.DataFrame({
        "recency": rng.integers(1, 13, n), "history": rng.gamma(2.0, 100.0, n).round(2),
        "channel": rng.choice(["Phone", "Web"], n), "treatment": rng.integers(0, 3, n),
        "revenue": rng.gamma(2.0, 1.0, n), "cost": rng.uniform(0.1, 2.0, n),
        "propensity": np.full(n, 1 / 3),
    })  # fmt: skip
    path = tmp_path / "holdout.parquet"
    holdout.to_parquet(path)
    v1, v2 = (OnnxModel.load(model_sources[v]) for v in ("v1", "v2"))
    lenient = Settings(retrain_min_holdout=100, retrain_min_z=-1e9)
    same = compare(v1, v1, path, lenient, {"margin": 0.0})
    assert same["area_gain"] == 0 and same["revenue_gain"] == 0
    assert same["decision"] == "keep champion"
    other = compare(v1, v2, path, lenient, {"margin": -1e9})
    assert other["decision"] == "activate" and "paired SE" in other["reason"]
    # The paired gain is the difference of the two curves' mean EOM revenue, with a real SE.
    means = other["challenger"]["mean_revenue"] - other["champion"]["mean_revenue"]
    assert other["revenue_gain"] == pytest.approx(means) and other["revenue_gain_se"] > 0
    assert compare(v1, v2, path, lenient, {"margin": 1e9})["decision"] == "keep champion"
    strict = Settings(retrain_min_holdout=100, retrain_min_z=1e9)
    assert compare(v1, v2, path, strict, {"margin": -1e9})["decision"] == "keep champion"
    few = compare(v1, v2, path, Settings(retrain_min_holdout=1000), {"margin": -1e9})
    assert few["decision"] == "keep champion" and "only 400 held-out rows" in few["reason"]
    forced = compare(v1, v2, path, strict, {"margin": 1e9, "force": True})
    assert forced["decision"] == "activate" and forced["reason"] == "forced"


def test_database_allows_one_job_in_progress(client: TestClient, settings: Settings) -> None:
    """The partial unique index, not only the service's check, keeps jobs one at a time."""
    import sqlalchemy as sa

    engine = make_engine(settings)

    def job(in_progress: bool) -> RetrainJob:
        return RetrainJob(
            id=uuid.uuid4(), status="running" if in_progress else "failed",
            in_progress=in_progress, created_at=datetime.now(UTC), params={}, workdir="-",
        )  # fmt: skip

    with Session(engine) as session, session.begin():
        session.add_all([job(True), job(False), job(False)])
    with pytest.raises(sa.exc.IntegrityError), Session(engine) as session, session.begin():
        session.add(job(True))
    engine.dispose()
