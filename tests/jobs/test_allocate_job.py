"""The campaign-scale allocation job (app/jobs/allocate.py) on SQLite and PostgreSQL.

It must return what allocate() returns on all predictions at once, explore exactly as
POST /v1/allocations does, refuse bad tables before storing anything, and store all or nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import app as cli_app
from app.config import Settings
from app.core.solver import InfeasibleBudget, allocate
from app.inference import OnnxModel
from app.jobs.allocate import BatchInputError, BatchRequest, JobCancelled, Progress, run_batch
from app.services.exploration import allocate_with_exploration
from tests.utils.tables import customer_frame


def write_parts(frame: pd.DataFrame, directory: Path, sizes: list[int]) -> Path:
    """The frame split into Parquet files part-0.. of the given sizes (read back in name order)."""
    directory.mkdir(parents=True, exist_ok=True)
    lo = 0
    for i, size in enumerate(sizes):
        frame.iloc[lo : lo + size].to_parquet(directory / f"part-{i}.parquet", row_group_size=700)
        lo += size
    assert lo == len(frame)
    return directory


@pytest.fixture
def job_settings(client: TestClient, settings: Settings, tmp_path: Path) -> Settings:
    """The service's settings (tiny-v1 active) with small chunks, so tables span many."""
    return settings.model_copy(update={"batch_chunk_rows": 1_024, "jobs_dir": tmp_path / "jobs"})


def predictions(settings: Settings, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return OnnxModel.load(settings.models_dir / "tiny-v1").predict_columns(frame)


def counts(settings: Settings) -> tuple[int, int]:
    engine = sa.create_engine(sa.make_url(settings.database_url).set(drivername=_driver(settings)))
    with engine.connect() as conn:
        allocations = conn.execute(sa.text("SELECT count(*) FROM allocations")).scalar_one()
        decisions = conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one()
    engine.dispose()
    return int(allocations), int(decisions)


def _driver(settings: Settings) -> str:
    url = sa.make_url(settings.database_url)
    return "postgresql+psycopg" if url.get_backend_name() == "postgresql" else url.drivername


def test_job_equals_one_global_solve_and_is_an_ordinary_allocation(
    job_settings: Settings, client: TestClient, tmp_path: Path
) -> None:
    frame = customer_frame(5_000)
    source = write_parts(frame, tmp_path / "in", [1_700, 2_900, 400])
    seen: list[Progress] = []
    result = run_batch(
        BatchRequest(source, budget=1.3, per_capita=True, campaign="spring"),
        settings=job_settings, workdir=tmp_path / "w", store=True, on_progress=seen.append,
    )  # fmt: skip
    revenue, cost = predictions(job_settings, frame)
    expected = allocate(revenue, cost, 1.3 * 5_000)
    decisions = pd.read_parquet(result.decisions_path)
    assert decisions["position"].tolist() == list(range(5_000))
    assert decisions["customer_id"].tolist() == frame["customer_id"].tolist()
    assert (decisions["treatment"].to_numpy() == expected.treatment).all()
    assert result.revenue == pytest.approx(expected.revenue, rel=1e-9)
    assert result.cost <= result.budget_total == pytest.approx(6_500.0)
    assert result.lam == pytest.approx(expected.lam)
    assert [p.phase for p in seen][-1] == "done" and seen[-1].rows_scored == 5_000
    assert any(p.phase == "reading" and 0 < p.fraction < 0.6 for p in seen)

    # The stored result is an ordinary allocation: read it, page its decisions, record outcomes.
    assert counts(job_settings) == (1, 5_000)
    got = client.get(f"/v1/allocations/{result.allocation_id}", params={"limit": 3, "offset": 10})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["n_customers"] == 5_000 and body["campaign"] == "spring"
    assert body["expected_revenue"] == pytest.approx(expected.revenue, rel=1e-9)
    assert [d["customer_id"] for d in body["decisions"]] == ["c10", "c11", "c12"]
    assert body["decisions"][0]["treatment"] == int(expected.treatment[10])
    outcome = {"outcomes": [{"customer_id": "c11", "revenue": 3.0, "cost": 1.0}]}
    posted = client.post(f"/v1/allocations/{result.allocation_id}/outcomes", json=outcome)
    assert posted.status_code in (200, 201), posted.text


def test_exploration_draws_as_the_request_path_does(job_settings: Settings, tmp_path: Path) -> None:
    frame = customer_frame(3_000, seed=1)
    source = write_parts(frame, tmp_path / "in", [1_000, 2_000])
    result = run_batch(
        BatchRequest(source, budget=4_000.0, exploration_rate=0.25, seed=11),
        settings=job_settings, workdir=tmp_path / "w", store=False,
    )  # fmt: skip
    revenue, cost = predictions(job_settings, frame)
    expected = allocate_with_exploration(revenue, cost, 4_000.0, 0.25, 11)
    decisions = pd.read_parquet(result.decisions_path)
    assert (decisions["treatment"].to_numpy() == expected.treatment).all()
    assert (decisions["explored"].to_numpy() == expected.explored).all()
    np.testing.assert_allclose(decisions["propensity"].to_numpy(), expected.propensity)
    assert result.n_explored == int(expected.explored.sum()) > 600
    assert result.revenue == pytest.approx(expected.revenue, rel=1e-9)
    assert result.seed == 11 and "features" not in decisions.columns
    assert counts(job_settings) == (0, 0)  # store=False


def test_csv_input_gives_the_parquet_result(job_settings: Settings, tmp_path: Path) -> None:
    frame = customer_frame(2_500, seed=2)
    frame.to_csv(tmp_path / "in.csv", index=False)
    write_parts(frame, tmp_path / "pq", [2_500])
    runs = [
        run_batch(
            BatchRequest(path, budget=3_000.0),
            settings=job_settings,
            workdir=tmp_path / name,
            store=False,
        )  # fmt: skip
        for name, path in (("a", tmp_path / "in.csv"), ("b", tmp_path / "pq"))
    ]
    a, b = (pd.read_parquet(r.decisions_path) for r in runs)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: f.drop(columns=["history"]), "missing column 'history'"),
        (lambda f: f.assign(history=f["history"].where(f.index != 1_500)), "'history': row 1500"),
        (lambda f: f.assign(recency=f["recency"].astype(str).where(f.index != 7, "soon")),
         "'recency': row 7 is not numeric"),
        (lambda f: f.assign(customer_id=f["customer_id"].where(f.index != 2_000, "c3")),
         "'customer_id': row 2000 repeats the id of row 3"),
        (lambda f: f.assign(customer_id=f["customer_id"].where(f.index != 9, "")),
         "'customer_id': row 9 is empty"),
        (lambda f: f.assign(history=f["history"].where(f.index != 5, 1e300)),
         "'history': row 5 is out of range"),
    ],
)  # fmt: skip
def test_bad_tables_are_refused_before_anything_is_stored(
    job_settings: Settings, tmp_path: Path, corrupt: Any, message: str
) -> None:
    frame = corrupt(customer_frame(2_100))
    source = write_parts(frame, tmp_path / "in", [1_000, 1_100])
    with pytest.raises(BatchInputError, match=message):
        run_batch(
            BatchRequest(source, budget=5_000.0), settings=job_settings,
            workdir=tmp_path / "w", store=True,
        )  # fmt: skip
    assert counts(job_settings) == (0, 0)
    assert not list((tmp_path / "w").glob("*"))  # no spill, no half-written decisions


def test_infeasible_budget_and_cancel_store_nothing(job_settings: Settings, tmp_path: Path) -> None:
    source = write_parts(customer_frame(2_000), tmp_path / "in", [2_000])
    with pytest.raises(InfeasibleBudget):
        run_batch(
            BatchRequest(source, budget=1.0), settings=job_settings,
            workdir=tmp_path / "w", store=True,
        )  # fmt: skip
    calls = iter(range(100))
    with pytest.raises(JobCancelled):
        run_batch(
            BatchRequest(source, budget=3_000.0), settings=job_settings,
            workdir=tmp_path / "w", store=True, cancelled=lambda: next(calls) >= 1,
        )  # fmt: skip
    assert counts(job_settings) == (0, 0)
    assert not list((tmp_path / "w").glob("*"))


def test_dfcl_allocate_writes_decisions_and_fails_in_one_line(
    job_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = customer_frame(1_500, seed=3)
    frame.to_parquet(tmp_path / "in.parquet")
    for key, value in (
        ("DFCL_DATABASE_URL", job_settings.database_url),
        ("DFCL_MODELS_DIR", str(job_settings.models_dir)),
        ("DFCL_JOBS_DIR", str(tmp_path / "jobs")),
    ):
        monkeypatch.setenv(key, value)
    out = tmp_path / "decisions.parquet"
    ran = CliRunner().invoke(
        cli_app,
        ["allocate", str(tmp_path / "in.parquet"), "--budget", "1.2", "--per-capita",
         "--no-store", "--out", str(out)],
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert "1,500 customers" in ran.output and "decisions written" in ran.output
    revenue, cost = predictions(job_settings, frame)
    expected = allocate(revenue, cost, 1.2 * 1_500)
    assert (pd.read_parquet(out)["treatment"].to_numpy() == expected.treatment).all()
    assert counts(job_settings) == (0, 0)

    frame.drop(columns=["channel"]).to_parquet(tmp_path / "bad.parquet")
    bad = CliRunner().invoke(cli_app, ["allocate", str(tmp_path / "bad.parquet"), "--budget", "9"])
    assert bad.exit_code == 2
    assert "missing column 'channel'" in bad.output and "Traceback" not in bad.output
    assert not list((tmp_path / "jobs").glob("*"))
