"""The Ray engine (app/jobs/ray_engine.py) against the local engine, on a local 2-worker Ray.

`--engine ray` must give the very decisions of `--engine local`: the same treatment for every
customer (exact ties included, which need the same global row keys), the same exploration
draw and propensities, the same totals, and the same refusals of bad tables. One Ray session
serves the module: its start-up (a few seconds) is most of what these tests cost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.config import Settings
from app.core.solver import allocate
from app.inference import OnnxModel
from app.jobs import ray_engine  # imports ray only when used
from app.jobs.allocate import (
    BatchInputError,
    BatchRequest,
    Decide,
    Exploration,
    Source,
    run_batch,
    score_local,
    solve_table,
)
from tests.utils.tables import customer_frame

pytest.importorskip("ray", reason="the Ray engine needs the [scale] extra: pip install '.[scale]'")

SIZES = [1_700, 2_900, 400, 1_000]  # several files, none a multiple of the chunk size
CHUNK = 1_024  # small chunks: the table spans several blocks and Ray tasks


@pytest.fixture(scope="module")
def ray_session() -> Iterator[float]:
    """A local Ray with 2 workers for this module; yields its start-up time in seconds."""
    start = time.perf_counter()
    ray_engine.connect(Settings(), num_cpus=2)
    yield time.perf_counter() - start
    ray_engine.shutdown()


@pytest.fixture
def job_settings(client: TestClient, settings: Settings, tmp_path: Path) -> Settings:
    """tiny-v1 active on SQLite, chunks of CHUNK rows."""
    return settings.model_copy(update={"batch_chunk_rows": CHUNK, "jobs_dir": tmp_path / "jobs"})


def parts(frame: pd.DataFrame, directory: Path, suffix: str = ".parquet") -> Path:
    """The frame as files part-0, part-1, ... of SIZES rows (read back in name order)."""
    directory.mkdir(parents=True)
    bounds = np.cumsum([0, *SIZES])
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = frame.iloc[lo:hi]
        if suffix == ".csv":
            part.to_csv(directory / f"part-{i}.csv", index=False)
        else:
            part.to_parquet(directory / f"part-{i}.parquet", row_group_size=700)
    return directory


def predictions(settings: Settings, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return OnnxModel.load(settings.models_dir / "tiny-v1").predict_columns(frame)


def counts(settings: Settings) -> tuple[int, int]:
    """Allocations and decisions stored (SQLite)."""
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        allocations = conn.execute(sa.text("SELECT count(*) FROM allocations")).scalar_one()
        stored = conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one()
    engine.dispose()
    return int(allocations), int(stored)


def ties(n: int) -> pd.DataFrame:
    """Customers whose features repeat a few profiles, so predictions tie exactly, many times
    over and across files: which of them gets the budget's last upgrade depends on row order."""
    frame = customer_frame(n, seed=4)
    profiles = customer_frame(6, seed=5)
    pick = np.random.default_rng(6).integers(0, len(profiles), n)
    for column in ("recency", "history", "channel"):
        frame[column] = profiles[column].to_numpy()[pick]
    return frame


def decisions(path: Path) -> pd.DataFrame:
    """Decisions Parquet: one file (local engine) or a directory of part files (Ray)."""
    return pq.read_table(path).to_pandas()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("rate", "seed", "budget"), [(0.0, None, 1.3), (0.2, 11, 1.6)], ids=["plain", "explore"]
)
def test_ray_decides_exactly_as_the_local_engine(
    ray_session: float, job_settings: Settings, tmp_path: Path, rate: float, seed: int | None,
    budget: float,
) -> None:  # fmt: skip
    frame = customer_frame(sum(SIZES), seed=1)
    source = parts(frame, tmp_path / "in")
    runs = {}
    for engine in ("local", "ray"):
        request = BatchRequest(
            source, budget=budget, per_capita=True, exploration_rate=rate, seed=seed,
            engine=engine, campaign=engine,
        )  # fmt: skip
        runs[engine] = run_batch(
            request, settings=job_settings, workdir=tmp_path / engine, store=True
        )
    local, ray = runs["local"], runs["ray"]
    a, b = decisions(local.decisions_path), decisions(ray.decisions_path)
    assert len(b) == sum(SIZES) and b["position"].tolist() == list(range(sum(SIZES)))
    assert b["customer_id"].tolist() == frame["customer_id"].tolist()
    pd.testing.assert_frame_equal(a, b)  # treatments, propensities, explored flags, features
    assert (ray.revenue, ray.cost, ray.lam) == pytest.approx((local.revenue, local.cost, local.lam))
    assert ray.cost <= ray.budget_total == local.budget_total
    assert ray.n_explored == local.n_explored and (ray.n_explored > 1_000) == (rate > 0)
    assert counts(job_settings) == (2, 2 * sum(SIZES))  # both stored, as ordinary allocations
    if rate == 0.0:  # and both are allocate() on all predictions at once
        revenue, cost = predictions(job_settings, frame)
        expected = allocate(revenue, cost, budget * sum(SIZES))
        assert (b["treatment"].to_numpy() == expected.treatment).all()
        assert ray.revenue == pytest.approx(expected.revenue, rel=1e-9)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_exact_ties_are_broken_by_the_global_row(
    ray_session: float, job_settings: Settings, tmp_path: Path
) -> None:
    """Scored once on each engine, solved at budgets that cut through runs of equal slopes."""
    frame = ties(sum(SIZES))
    source = Source.open(parts(frame, tmp_path / "in"))
    model = OnnxModel.load(job_settings.models_dir / "tiny-v1")
    request = BatchRequest(source.files[0].parent, budget=0.0)
    local = score_local(
        source, model, request, chunk_rows=CHUNK, spill=tmp_path / "s.arrow",
        with_features=False, progress=lambda n: None, cancelled=lambda: False,
    )  # fmt: skip
    table = ray_engine.score(
        source, model, request, settings=job_settings, workdir=tmp_path, with_features=False,
        progress=lambda n: None, cancelled=lambda: False,
    )  # fmt: skip
    assert table.n_rows == local.n_rows == sum(SIZES) and len(table.spans) > len(SIZES)
    revenue, cost = predictions(job_settings, frame)
    cheapest, dearest = cost.min(axis=1).sum(), cost.max(axis=1).sum()
    plain = Exploration(0, 0.0, 3)
    for share in (0.1, 0.35, 0.6, 0.85):
        total = cheapest + share * (dearest - cheapest)
        expected = allocate(revenue, cost, total)
        got = []
        for name, t in (("local", local), ("ray", table)):
            plan, lam, _ = solve_table(t, plain, total)
            assert plan is not None and plan.cut is not None
            path = tmp_path / f"{name}-{share}.parquet"
            t.write(Decide(plan, plain, lam, model.treatments), path, lambda: False)
            got.append((plan.cut, decisions(path)["treatment"].to_numpy()))
        (local_cut, local_t), (ray_cut, ray_t) = got
        assert ray_cut == local_cut  # the same slope, row and hull step cut the tie
        np.testing.assert_array_equal(ray_t, expected.treatment)
        np.testing.assert_array_equal(local_t, expected.treatment)
        # The tie is real: customers identical to the cut's row got different treatments.
        twins = (frame[["recency", "history", "channel"]] == frame.iloc[ray_cut.row][
            ["recency", "history", "channel"]]).all(axis=1).to_numpy()  # fmt: skip
        assert twins.sum() > 100 and np.unique(ray_t[twins]).size > 1
    local.close()
    table.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_rows_are_named_as_the_local_engine_names_them(
    ray_session: float, job_settings: Settings, tmp_path: Path
) -> None:
    frame = customer_frame(sum(SIZES))
    frame["history"] = frame["history"].where(frame.index != 5_500)  # in the fourth file
    source = parts(frame, tmp_path / "in")
    with pytest.raises(BatchInputError, match="column 'history': row 5500 is empty$"):
        run_batch(
            BatchRequest(source, budget=9_000.0, engine="ray"), settings=job_settings,
            workdir=tmp_path / "w", store=True,
        )  # fmt: skip
    frame = customer_frame(sum(SIZES))
    frame.loc[3_000, "customer_id"] = "c17"
    csv = parts(frame, tmp_path / "csv", ".csv")
    with pytest.raises(BatchInputError, match="row 3000 repeats the id of row 17"):
        run_batch(
            BatchRequest(csv, budget=9_000.0, engine="ray"), settings=job_settings,
            workdir=tmp_path / "w", store=True,
        )  # fmt: skip
    assert counts(job_settings) == (0, 0)
    assert not list((tmp_path / "w").glob("*"))
