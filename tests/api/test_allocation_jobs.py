"""Allocation jobs over HTTP: uploads, server paths, the job process, cancel, SIGKILL, scopes.

Every job runs as a real process (app/jobs/allocation_job.py) on SQLite and PostgreSQL. To
stop a job at a chosen point without racing it (a few thousand rows take milliseconds), some
tests start it through a wrapper that waits at a gate: after its "storing" progress (outside
any transaction) or inside the storing transaction itself, just before it would commit.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import database_url
from app.jobs import runner
from app.main import create_app
from app.services.job_process import process_alive
from tests.utils.tables import customer_frame as customer_table

FINISHED = ("succeeded", "failed", "cancelled")
PARQUET = "application/vnd.apache.parquet"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """Jobs under tmp_path; server paths allowed under tmp_path/inputs only."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    return settings.model_copy(
        update={
            "data_dir": tmp_path,
            "jobs_dir": tmp_path / "jobs",
            "batch_input_roots": [inputs],
            "batch_chunk_rows": 1024,  # several chunks even for small tables
        }
    )


@pytest.fixture(autouse=True)
def _no_jobs(db_url: str) -> None:
    """conftest empties the other tables; this one is ours."""
    engine = sa.create_engine(database_url(Settings(database_url=db_url)))
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM allocation_jobs"))
    engine.dispose()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def upload(client: TestClient, frame: pd.DataFrame) -> str:
    r = client.post("/v1/uploads", content=parquet_bytes(frame), headers={"Content-Type": PARQUET})
    assert r.status_code == 201, r.text
    return str(r.json()["upload_id"])


def wait(client: TestClient, job_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/allocation-jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def stored_rows(url: str) -> tuple[int, int]:
    """(allocations, decisions) rows in the database."""
    engine = sa.create_engine(database_url(Settings(database_url=url)))
    with engine.connect() as conn:
        counts = tuple(
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("allocations", "decisions")
        )
    engine.dispose()
    return counts[0], counts[1]


def test_upload_job_end_to_end(client: TestClient, settings: Settings, db_url: str) -> None:
    n = 3000
    frame = customer_table(n)
    upload_id = upload(client, frame)
    body = {"upload_id": upload_id, "budget": 1.5, "per_capita": True, "campaign": "spring"}
    r = client.post("/v1/allocation-jobs", json=body)
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["status"] == "queued" and queued["links"]["self"].endswith(queued["id"])
    params = queued["params"]
    assert params["model_version"] == "tiny-v1" and params["engine"] == "local"
    assert params["exploration_rate"] == 0.0 and params["upload_id"] == upload_id
    job = wait(client, queued["id"])
    assert job["status"] == "succeeded", job
    assert job["phase"] == "done" and job["progress"] == 1.0 and job["error"] is None
    assert job["n_customers"] == n and job["rows_read"] == n and job["rows_scored"] == n
    assert set(job["result"]["timings_s"]) >= {"read_score", "solve", "store"}
    assert job["result"]["expected_cost"] <= job["result"]["budget_total"] == 1.5 * n

    # An ordinary allocation: read back, decisions paged, outcomes recorded.
    allocation_id = job["allocation_id"]
    assert job["links"]["allocation"] == f"/v1/allocations/{allocation_id}"
    alloc = client.get(f"/v1/allocations/{allocation_id}", params={"limit": 10}).json()
    assert alloc["n_customers"] == n and alloc["campaign"] == "spring"
    assert alloc["budget_total"] == 1.5 * n and alloc["multiplier"] == job["result"]["multiplier"]
    assert [d["customer_id"] for d in alloc["decisions"]] == [f"c{i}" for i in range(10)]
    assert stored_rows(db_url) == (1, n)
    outcome = {"customer_id": "c7", "revenue": 12.5, "cost": 1.0}
    r = client.post(f"/v1/allocations/{allocation_id}/outcomes", json={"outcomes": [outcome]})
    assert r.status_code == 200 and r.json()["n_outcomes"] == 1, r.text

    # The decisions as Parquet: the stored decisions, row for row.
    r = client.get(job["links"]["decisions"])
    assert r.status_code == 200 and r.headers["content-type"] == PARQUET
    decisions = pd.read_parquet(io.BytesIO(r.content))
    assert (
        len(decisions) == n and decisions["customer_id"].tolist() == frame["customer_id"].tolist()
    )
    assert decisions["expected_cost"].sum() == pytest.approx(alloc["expected_cost"])
    assert decisions.loc[7, "treatment"] == alloc["decisions"][7]["treatment"]
    # Scratch files are gone; the decisions file and the log stay.
    workdir = settings.jobs_dir / queued["id"]  # type: ignore[operator]
    assert sorted(p.name for p in workdir.iterdir()) == ["decisions.parquet", "job.log"]
    listed = client.get("/v1/allocation-jobs").json()
    assert [j["id"] for j in listed["items"]] == [queued["id"]] and listed["next_offset"] is None
    assert client.delete(f"/v1/allocation-jobs/{queued['id']}").status_code == 409


def test_server_path_job_with_exploration(client: TestClient, settings: Settings) -> None:
    """A directory of Parquet parts under an allowed root; exploration as on /v1/allocations."""
    parts = settings.batch_input_roots[0] / "campaign"
    parts.mkdir()
    frame = customer_table(2500, seed=1)
    frame.iloc[:1200].to_parquet(parts / "part-0.parquet", index=False)
    frame.iloc[1200:].to_parquet(parts / "part-1.parquet", index=False)
    body = {"path": str(parts), "budget": 1.5, "per_capita": True,
            "exploration_rate": 0.2, "seed": 7}  # fmt: skip
    r = client.post("/v1/allocation-jobs", json=body)
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    alloc = client.get(f"/v1/allocations/{job['allocation_id']}", params={"limit": 1000}).json()
    assert alloc["n_customers"] == 2500 and alloc["seed"] == 7 and alloc["exploration_rate"] == 0.2
    assert 300 < alloc["n_explored"] < 700 and job["result"]["n_explored"] == alloc["n_explored"]
    explored = [d for d in alloc["decisions"] if d["explored"]]
    assert explored and all(d["propensity"] < 1 for d in alloc["decisions"])
    page = client.get("/v1/allocation-jobs", params={"limit": 1}).json()
    assert page["items"][0]["id"] == job["id"]


def test_bad_input_fails_the_job_and_stores_nothing(
    client: TestClient, settings: Settings, db_url: str
) -> None:
    good = customer_table(3000)
    missing = good.drop(columns=["history"])
    nan = good.assign(history=good["history"].where(good.index != 2100))
    duplicate = good.copy()
    duplicate.loc[2500, "customer_id"] = "c42"
    cases = {"'history'": missing, "'history': row 2100": nan,
             "'customer_id': row 2500 repeats the id of row 42": duplicate}  # fmt: skip
    jobs = {}
    for expected, frame in cases.items():
        r = client.post(
            "/v1/allocation-jobs", json={"upload_id": upload(client, frame), "budget": 5e3}
        )
        assert r.status_code == 202, r.text
        jobs[expected] = r.json()["id"]
    for expected, job_id in jobs.items():
        job = wait(client, job_id)
        assert job["status"] == "failed" and expected in job["error"], job
        assert "\n" not in job["error"] and job["allocation_id"] is None
        workdir = settings.jobs_dir / job_id  # type: ignore[operator]
        assert [p.name for p in workdir.iterdir()] == ["job.log"]  # scratch removed
        assert client.get(f"/v1/allocation-jobs/{job_id}/decisions.parquet").status_code == 409
    assert stored_rows(db_url) == (0, 0)
    # An infeasible budget fails the same way, with the budget it would need.
    r = client.post("/v1/allocation-jobs", json={"upload_id": upload(client, good), "budget": 1.0})
    job = wait(client, r.json()["id"])
    assert job["status"] == "failed" and "minimum feasible budget" in job["error"], job
    assert stored_rows(db_url) == (0, 0)


def test_requests_refused_before_202(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    upload_id = upload(client, customer_table(10))
    outside = tmp_path / "outside.parquet"
    customer_table(10).to_parquet(outside)
    refused = {
        "path outside the roots (exists)": ({"path": str(outside)}, 422, "path"),
        "path outside the roots (missing)": ({"path": "/etc/nothing.parquet"}, 422, "path"),
        "escape by ..": ({"path": f"{settings.batch_input_roots[0]}/../outside.parquet"}, 422,
                         "path"),
        "missing under the roots": ({"path": f"{settings.batch_input_roots[0]}/x.csv"}, 422,
                                    "path"),
        "unknown upload": ({"upload_id": str(uuid.uuid4())}, 422, "upload_id"),
        "both sources": ({"upload_id": upload_id, "path": str(outside)}, 422, "exactly one"),
        "no source": ({}, 422, "exactly one"),
        "negative budget": ({"upload_id": upload_id, "budget": -1}, 422, "budget"),
        "rate above 1": ({"upload_id": upload_id, "exploration_rate": 1.5}, 422, "exploration"),
        "unknown model": ({"upload_id": upload_id, "model_version": "nope"}, 404, "nope"),
    }  # fmt: skip
    details = {}
    for name, (fields, status, words) in refused.items():
        r = client.post("/v1/allocation-jobs", json={"budget": 100.0, **fields})
        assert r.status_code == status and words in r.json()["detail"], (name, r.text)
        details[name] = r.json()["detail"]
    # Outside the roots, whether the file exists is not revealed.
    assert details["path outside the roots (exists)"] == details["path outside the roots (missing)"]
    assert client.get("/v1/allocation-jobs").json()["items"] == []
    r = client.get(f"/v1/allocation-jobs/{uuid.uuid4()}")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    assert client.delete(f"/v1/allocation-jobs/{uuid.uuid4()}").status_code == 404


def test_server_paths_disabled_by_default(
    settings: Settings, auth_headers: dict[str, str], model_sources: dict[str, Path]
) -> None:
    no_roots = settings.model_copy(update={"batch_input_roots": []})
    with TestClient(create_app(no_roots), headers=auth_headers) as client:
        client.post("/v1/models", json={"path": str(model_sources["v1"])})
        r = client.post("/v1/allocation-jobs", json={"path": "/tmp", "budget": 1.0})
        assert r.status_code == 422 and "DFCL_BATCH_INPUT_ROOTS" in r.json()["detail"]
        r = client.post("/v1/allocation-jobs", json={"upload_id": upload(client, customer_table(5)),
                                                     "budget": 1.0})  # fmt: skip
        assert r.status_code == 503  # no active model: refused before anything is queued


def test_uploads_stream_past_the_json_limit(
    settings: Settings, auth_headers: dict[str, str]
) -> None:
    """Uploads have their own size limit (the JSON one would refuse any real file)."""
    small = settings.model_copy(update={"max_body_bytes": 1024, "max_upload_bytes": 200_000})
    payload = parquet_bytes(customer_table(3000))
    assert 1024 < len(payload) < 200_000
    with TestClient(create_app(small), headers=auth_headers) as client:
        r = client.post("/v1/uploads", params={"format": "parquet"}, content=payload)
        assert r.status_code == 201 and r.json()["bytes"] == len(payload), r.text
        stored = settings.jobs_dir / "uploads" / f"{r.json()['upload_id']}.parquet"  # type: ignore[operator]
        assert stored.read_bytes() == payload
        csv = customer_table(20).to_csv(index=False).encode()
        r = client.post("/v1/uploads", content=csv, headers={"Content-Type": "text/csv"})
        assert r.status_code == 201 and r.json()["format"] == "csv"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts streamed bytes
            for _ in range(30):
                yield b"x" * 10_000

        r = client.post("/v1/uploads", params={"format": "csv"}, content=chunks())
        assert r.status_code == 413 and "DFCL_MAX_UPLOAD_BYTES" in r.json()["detail"]
        too_big = b"PAR1" + b"\0" * 250_000 + b"PAR1"
        r = client.post("/v1/uploads", params={"format": "parquet"}, content=too_big)
        assert r.status_code == 413
        for query, content, words in (
            ({"format": "parquet"}, b"customer_id,recency\n", "not a Parquet file"),
            ({"format": "csv"}, b"", "empty"),
            ({}, b"a,b\n", "format"),
            ({"format": "xlsx"}, b"a,b\n", "format"),
        ):
            r = client.post("/v1/uploads", params=query, content=content)
            assert r.status_code == 422 and words in r.json()["detail"], r.text
        # JSON bodies keep their limit.
        r = client.post("/v1/allocation-jobs", json={"path": "x" * 2000, "budget": 1.0})
        assert r.status_code == 413 and "DFCL_MAX_BODY_BYTES" in r.json()["detail"]
    # Nothing half-written is left behind.
    names = sorted(p.suffix for p in (settings.jobs_dir / "uploads").iterdir())  # type: ignore[operator]
    assert names == [".csv", ".parquet"]


# --- stopping a job at a chosen point -------------------------------------------------------

GATED_JOB = """
import runpy, sys, time
from pathlib import Path
from app.jobs import allocation_job

gate, where = Path(sys.argv[3]), sys.argv[4]

def wait_at_gate():
    (gate / "reached").touch()
    while not (gate / "open").exists():
        time.sleep(0.01)

if where == "storing":  # after the "storing" progress: outside any transaction
    progress = allocation_job.JobRow.progress
    def gated_progress(self, p):
        progress(self, p)
        if p.phase == "storing":
            wait_at_gate()
    allocation_job.JobRow.progress = gated_progress
else:  # inside the storing transaction: allocation and decisions inserted, not committed
    commit = allocation_job.JobRow.commit
    def gated_commit(self, session, allocation_id):
        wait_at_gate()
        commit(self, session, allocation_id)
    allocation_job.JobRow.commit = gated_commit
allocation_job.run(allocation_job.uuid.UUID(sys.argv[1]), Path(sys.argv[2]))
"""


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """gated(where) -> gate directory: the next jobs stop at `where` until gate/open exists."""

    def arm(where: str) -> Path:
        gate = tmp_path / f"gate-{where}"
        gate.mkdir()

        def command(job_id: uuid.UUID, workdir: Path, module: str = "") -> list[str]:
            # The job id stays on the command line: the pid check looks for it there.
            return [sys.executable, "-c", GATED_JOB, str(job_id), str(workdir), str(gate), where]

        monkeypatch.setattr(runner, "job_command", command)
        return gate

    return arm


def wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def job_pid(client: TestClient, job_id: str) -> int:
    from app.tables import AllocationJob

    with client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        pid = session.get(AllocationJob, uuid.UUID(job_id)).pid  # the API does not show it
    assert pid is not None
    return int(pid)


def test_cancel_a_running_job(
    client: TestClient, gated: Any, db_url: str, customers: Any, settings: Settings
) -> None:
    gate = gated("storing")
    r = client.post("/v1/allocation-jobs", json={"upload_id": upload(client, customer_table(3000)),
                                                 "budget": 5e3})  # fmt: skip
    job_id = r.json()["id"]
    wait_for(gate / "reached")
    job = client.get(f"/v1/allocation-jobs/{job_id}").json()
    assert job["status"] == "running" and job["phase"] == "storing" and job["rows_read"] == 3000
    # The service keeps serving while a job runs.
    r = client.post("/v1/allocations", json={"budget": 50.0, "customers": customers(5)})
    assert r.status_code == 201, r.text
    r = client.delete(f"/v1/allocation-jobs/{job_id}")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True, r.text
    (gate / "open").touch()
    job = wait(client, job_id)
    assert job["status"] == "cancelled" and job["allocation_id"] is None, job
    assert stored_rows(db_url) == (1, 5)  # only the allocation made over HTTP meanwhile
    assert client.delete(f"/v1/allocation-jobs/{job_id}").status_code == 409
    assert client.get(f"/v1/allocation-jobs/{job_id}/decisions.parquet").status_code == 409
    workdir = settings.jobs_dir / job_id  # type: ignore[operator]
    assert [p.name for p in workdir.iterdir()] == ["job.log"]


def test_cancel_before_the_job_starts(client: TestClient, db_url: str) -> None:
    """A job whose process is alive but not yet running sees the request when it starts."""
    r = client.post("/v1/allocation-jobs", json={"upload_id": upload(client, customer_table(50)),
                                                 "budget": 100.0})  # fmt: skip
    job_id = r.json()["id"]
    pid = job_pid(client, job_id)
    os.kill(pid, signal.SIGSTOP)  # still importing: frozen before it marks itself running
    try:
        r = client.delete(f"/v1/allocation-jobs/{job_id}")
        # queued (frozen while importing) or, if the process was already past that point or
        # gone, closed at once; either way the job ends cancelled with nothing stored
        assert r.status_code == 202 and r.json()["status"] in ("queued", "running", "cancelled")
    finally:
        os.kill(pid, signal.SIGCONT)
    job = wait(client, job_id)
    assert job["status"] == "cancelled", job
    assert stored_rows(db_url) == (0, 0)


def test_sigkill_inside_the_storing_transaction_stores_nothing(
    client: TestClient, gated: Any, db_url: str, customers: Any, settings: Settings
) -> None:
    gate = gated("commit")
    r = client.post("/v1/allocation-jobs", json={"upload_id": upload(client, customer_table(3000)),
                                                 "budget": 5e3})  # fmt: skip
    job_id = r.json()["id"]
    wait_for(gate / "reached")  # every decision is inserted, the commit is next
    pid = job_pid(client, job_id)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(pid, uuid.UUID(job_id)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job = client.get(f"/v1/allocation-jobs/{job_id}").json()
    assert job["status"] == "failed" and f"pid {pid}" in job["error"], job
    assert job["allocation_id"] is None
    assert stored_rows(db_url) == (0, 0)
    workdir = settings.jobs_dir / job_id  # type: ignore[operator]
    assert [p.name for p in workdir.iterdir()] == ["job.log"]  # scratch removed by the reader
    assert client.delete(f"/v1/allocation-jobs/{job_id}").status_code == 409
    # The service (and the database) carry on.
    r = client.post("/v1/allocations", json={"budget": 50.0, "customers": customers(5)})
    assert r.status_code == 201, r.text


def test_job_whose_process_is_gone_is_cancelled_on_request(client: TestClient) -> None:
    """DELETE of a job whose process died closes it as cancelled (nothing to wait for)."""
    r = client.post("/v1/allocation-jobs", json={"upload_id": upload(client, customer_table(50)),
                                                 "budget": 100.0})  # fmt: skip
    job_id = r.json()["id"]
    pid = job_pid(client, job_id)
    os.kill(pid, signal.SIGSTOP)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from app.tables import AllocationJob

    with client.app.state.sessionmaker() as session, session.begin():  # type: ignore[attr-defined]
        session.get(AllocationJob, uuid.UUID(job_id)).pid = dead.pid  # as if it had died
    try:
        r = client.delete(f"/v1/allocation-jobs/{job_id}")
        assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text
    finally:
        os.kill(pid, signal.SIGKILL)


def test_scopes(client: TestClient, db_url: str, new_key: Any) -> None:
    upload_id = upload(client, customer_table(20))
    r = client.post("/v1/allocation-jobs", json={"upload_id": upload_id, "budget": 100.0})
    job_id = r.json()["id"]
    wait(client, job_id)
    read = {"Authorization": f"Bearer {new_key(db_url, 'read')}"}
    allocate = {"Authorization": f"Bearer {new_key(db_url, 'allocate')}"}
    body = {"upload_id": upload_id, "budget": 100.0}
    no_key = {"Authorization": ""}
    assert client.post("/v1/uploads", content=b"x", headers={**read, "Content-Type": "text/csv"}
                       ).status_code == 403  # fmt: skip
    assert client.post("/v1/uploads?format=csv", content=b"x", headers=no_key).status_code == 401
    assert client.post("/v1/allocation-jobs", json=body, headers=read).status_code == 403
    assert client.delete(f"/v1/allocation-jobs/{job_id}", headers=read).status_code == 403
    assert client.get(f"/v1/allocation-jobs/{job_id}", headers=read).status_code == 200
    assert client.get(f"/v1/allocation-jobs/{job_id}/decisions.parquet",
                      headers=read).status_code == 200  # fmt: skip
    assert client.get("/v1/allocation-jobs", headers=allocate).status_code == 403
    assert client.get(f"/v1/allocation-jobs/{job_id}", headers=no_key).status_code == 401
    r = client.post("/v1/allocation-jobs", json=body, headers=allocate)
    assert r.status_code == 202, r.text
    wait(client, r.json()["id"])
    assert client.delete(f"/v1/allocation-jobs/{r.json()['id']}",
                         headers=allocate).status_code == 409  # fmt: skip


def test_idempotent_job_creation(client: TestClient) -> None:
    """A retried POST with the same Idempotency-Key starts no second job."""
    body = {"upload_id": upload(client, customer_table(20)), "budget": 100.0}
    key = {"Idempotency-Key": "campaign-42"}
    first = client.post("/v1/allocation-jobs", json=body, headers=key)
    again = client.post("/v1/allocation-jobs", json=body, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"]
    wait(client, first.json()["id"])
    assert len(client.get("/v1/allocation-jobs").json()["items"]) == 1


def test_decisions_in_parts_become_one_file(tmp_path: Path) -> None:
    """The Ray engine writes decisions as a directory of parts; the download is one file."""
    from app.jobs.allocation_job import single_file

    frame = customer_table(3000)
    path = tmp_path / "decisions.parquet"
    path.mkdir()
    frame.iloc[:1000].to_parquet(path / "part-0.parquet", index=False)
    frame.iloc[1000:].to_parquet(path / "part-1.parquet", index=False)
    single_file(path)
    assert path.is_file() and pd.read_parquet(path).equals(frame)
    single_file(path)  # a file already: left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.parquet"]
