"""Issue 16, validation: a retraining request is checked before the 202 (method, config keys and
types against TrainConfig, base tables exist and read as tables); nothing is queued otherwise."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize(
    "body, named",
    [
        ({"method": "deep-magic"}, "method"),
        ({"method": 3}, "method"),
        ({"config": {"epochs": "many"}}, "config.epochs"),
        ({"config": {"junk_key": 1}}, "config.junk_key"),
        ({"config": {"hidden": "64,32"}}, "config.hidden"),
        ({"config": {"lr": True}}, "config.lr"),
        ({"config": {"epochs": 0}}, "epochs"),
        ({"config": {"upper_loss": "nope"}}, "config.upper_loss"),
        ({"config": []}, "config"),
    ],
)
def test_bad_method_or_config_refused_before_202(
    client: TestClient, body: dict[str, Any], named: str
) -> None:
    r = client.post("/v1/retrain", json=body)
    assert r.status_code == 422, r.text
    assert named in r.json()["detail"]
    assert client.get("/v1/retrain").json() == []  # nothing queued


def test_config_number_overflowing_in_json_refused(client: TestClient) -> None:
    raw = '{"config": {"lr": 1e400, "extra": {"x": 1e999}}}'  # Python's json reads inf
    r = client.post("/v1/retrain", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "config" in r.json()["detail"], r.text


def test_base_tables_checked_before_202(client: TestClient, tmp_path: Path) -> None:
    good = pd.DataFrame({"recency": [1], "treatment": [0], "revenue": [1.0], "cost": [0.1]})
    no_outcomes = tmp_path / "no_outcomes.parquet"
    good[["recency"]].to_parquet(no_outcomes)
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("treatment,revenue,cost\n0,1,1\n")
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    cases = {
        "base_rct": str(tmp_path / "missing.parquet"),
        "base_obs": str(not_parquet),
        "eval_data": str(no_outcomes),
    }
    for field, path in cases.items():
        r = client.post("/v1/retrain", json={field: path})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == field and field in r.json()["detail"]
    for path in (str(empty_csv), str(tmp_path), "/etc/passwd"):
        r = client.post("/v1/retrain", json={"base_rct": path})
        assert r.status_code == 422, r.text
    assert client.get("/v1/retrain").json() == []


def test_config_check_needs_no_torch() -> None:
    """The service validates against TrainConfig without importing torch (stdlib-only module)."""
    import subprocess

    code = (
        "import sys; from app.schemas import check_train_config; "
        "check_train_config('bi-dfcl', {'epochs': 2, 'hidden': [8]}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_table_failing_deeper_checks_still_fails_the_job(
    client: TestClient, tmp_path: Path
) -> None:
    """What the header check cannot see (bad values) still fails the job, never the service."""
    import time

    bad = tmp_path / "bad_rct.csv"
    bad.write_text("recency,history,channel,treatment,revenue,cost\n1,2.0,Web,not-an-arm,1,1\n")
    r = client.post("/v1/retrain", json={"base_rct": str(bad)})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 120
    job = r.json()
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = client.get(f"/v1/retrain/{job['id']}").json()
    assert job["status"] == "failed" and job["new_version"] is None, job
    assert client.get("/readyz").json()["model_version"] == "tiny-v1"
