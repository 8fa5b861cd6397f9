"""What each key can see: server paths, training configs and raw error text are admin-only.

A read-scope key gets models without the card's training_data / config, and retraining and
allocation jobs with server paths replaced, the training config hidden, no log, and errors
with their data values (quoted values, rows, paths, decimals) redacted. On both databases.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.tables import AllocationJob, RetrainJob
from app.visibility import REDACTED, redact_text

SECRET_ROW = '{"recency": 3, "history": 987.65, "channel": "secret-channel-x"}'
DATA_ERROR = (
    "DataError: /srv/private/base_rct.csv: column 'treatment' must hold integers "
    f"(row 17: {SECRET_ROW})"
)


def _insert_jobs(url: str, workdir: Path) -> tuple[uuid.UUID, uuid.UUID]:
    """A failed retraining job and a failed allocation job, as their processes leave them."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "job.log").write_text(f"Traceback ...\n{DATA_ERROR}\n")
    now = datetime.now(UTC)
    engine = make_engine(Settings(database_url=url))
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            retrain = RetrainJob(
                id=uuid.uuid4(),
                status="failed",
                in_progress=False,
                created_at=now,
                finished_at=now,
                params={
                    "method": "bi-dfcl",
                    "config": {"epochs": 3, "hidden": [8]},
                    "base_rct": "/srv/private/base_rct.csv",
                    "base_obs": None,
                    "eval_data": None,
                    "margin": 0.0,
                    "force": False,
                },
                workdir=str(workdir),
                data={"loop_rct_rows": 10, "base_rct_rows": 99, "base_rct_path": "/srv/x.csv"},
                error=DATA_ERROR,
            )
            job = AllocationJob(
                id=uuid.uuid4(),
                status="failed",
                created_at=now,
                finished_at=now,
                params={"path": "/srv/private/customers.parquet", "budget": 1.0},
                workdir=str(workdir),
                phase="reading",
                error=DATA_ERROR,
            )
            session.add_all([retrain, job])
            return retrain.id, job.id
    finally:
        engine.dispose()


def _leaks(text: str) -> list[str]:
    return [s for s in ("/srv/private", "secret-channel-x", "987.65", "epochs") if s in text]


def test_read_key_sees_no_server_internals(
    client: TestClient, db_url: str, new_key: object, tmp_path: Path
) -> None:
    retrain_id, job_id = _insert_jobs(db_url, tmp_path / "job")
    read = {"Authorization": f"Bearer {new_key(db_url, 'read')}"}  # type: ignore[operator]

    # Models: the card's training paths and config only for admins.
    admin_models = client.get("/v1/models").json()
    assert "training_data" in admin_models[0]["card"] and "config" in admin_models[0]["card"]
    for body in (client.get("/v1/models", headers=read).json()[0],
                 client.get("/v1/models/active", headers=read).json()):  # fmt: skip
        assert "training_data" not in body["card"] and "config" not in body["card"]
        assert body["card"]["feature_spec"] and body["version"] == "tiny-v1"

    # Retraining jobs: paths, config, raw error and log for admins only.
    admin_job = client.get(f"/v1/retrain/{retrain_id}").json()
    assert admin_job["error"] == DATA_ERROR and admin_job["log_tail"]
    assert admin_job["params"]["base_rct"] == "/srv/private/base_rct.csv"
    for body in (client.get(f"/v1/retrain/{retrain_id}", headers=read).json(),
                 client.get("/v1/retrain", headers=read).json()[0]):  # fmt: skip
        assert body["params"]["base_rct"] == REDACTED and body["params"]["config"] == REDACTED
        assert body["params"]["base_obs"] is None and body["params"]["method"] == "bi-dfcl"
        assert body["data"] == {"loop_rct_rows": 10, "base_rct_rows": 99}
        assert body["log_tail"] == []
        assert "column 'treatment' must hold integers" in body["error"]
        assert "row 17" in body["error"] and not _leaks(str(body)), body

    # Allocation jobs: the server path and raw error for admins only.
    admin_alloc = client.get(f"/v1/allocation-jobs/{job_id}").json()
    assert admin_alloc["params"]["path"] == "/srv/private/customers.parquet"
    assert admin_alloc["error"] == DATA_ERROR
    for body in (client.get(f"/v1/allocation-jobs/{job_id}", headers=read).json(),
                 client.get("/v1/allocation-jobs", headers=read).json()["items"][0]):  # fmt: skip
        assert body["params"] == {"path": REDACTED, "budget": 1.0}
        assert "column 'treatment'" in body["error"] and not _leaks(str(body)), body


def test_redact_text_keeps_the_kind_of_error_not_the_data() -> None:
    assert redact_text(None) is None
    out = redact_text(DATA_ERROR)
    assert out == "DataError: <path>: column 'treatment' must hold integers (row 17: {…})", out
    out = redact_text("ValueError: column 'x' has a non-numeric value 'abc' at 1.5e3\nmore")
    assert out == "ValueError: column 'x' has a non-numeric value '…' at <number>", out
    assert redact_text("KeyError: ['a', 'b'] in data/base.parquet") == "KeyError: […] in <path>"
    assert len(redact_text("x" * 5000) or "") <= 500
