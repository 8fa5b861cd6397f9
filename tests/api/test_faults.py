"""Faults: database unreachable and back, requests past their deadline, a corrupt model file.

The database outage is simulated with a TCP proxy this test owns (127.0.0.1:<port> -> the shared
PostgreSQL), closed and reopened; the shared server itself is never stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.services.job_process import process_alive
from app.tables import RetrainJob


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `down()` drops every connection and stops listening."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
            except OSError:
                pass
            listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy(("127.0.0.1", 5432))
    p.up()
    try:
        yield p
    finally:
        p.down()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite has no server to lose
def test_database_unreachable_is_503_then_serves_again(
    postgres_url: str,
    db_url: str,
    proxy: TcpProxy,
    tmp_path: Path,
    model_sources: dict[str, Path],
    customers: Any,
    auth_headers: dict[str, str],
) -> None:
    url = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    settings = Settings(
        database_url=url.render_as_string(hide_password=False), models_dir=tmp_path / "models"
    )
    body = {"budget": 10.0, "customers": customers(5)}
    with TestClient(create_app(settings), headers=auth_headers) as client:
        assert client.post("/v1/models", json={"path": str(model_sources["v1"])}).status_code == 201
        assert client.post("/v1/models/tiny-v1/activate").status_code == 200
        assert client.post("/v1/allocations", json=body).status_code == 201

        proxy.down()
        started = time.monotonic()
        for method, path in (("POST", "/v1/allocations"), ("GET", "/v1/allocations")):
            r = client.request(method, path, json=body if method == "POST" else None)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "DatabaseUnavailable" and r.headers["retry-after"] == "5"
            assert "nothing was stored" in r.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["database"] is False
        assert client.get("/healthz").status_code == 200  # the process itself is fine
        assert time.monotonic() - started < 10  # refused fast, not hanging

        proxy.up()
        r = client.post("/v1/allocations", json=body)
        assert r.status_code == 201, r.text
        assert client.get("/readyz").status_code == 200
        assert client.get(f"/v1/allocations/{r.json()['id']}").status_code == 200
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM allocations")).scalar_one() == 2
    engine.dispose()


def test_request_past_its_deadline_is_504_and_rolled_back(
    client: TestClient, settings: Settings, customers: Any, auth_headers: dict[str, str]
) -> None:
    """Another transaction holds the write lock; the request times out and stores nothing."""
    engine = sa.create_engine(client.app.state.engine.url)  # type: ignore[attr-defined]
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        conn.execute(sa.text("BEGIN"))
        conn.execute(sa.text("LOCK TABLE allocations IN EXCLUSIVE MODE"))
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    quick = settings.model_copy(update={"request_timeout_s": 0.5})
    try:
        with TestClient(create_app(quick), headers=auth_headers) as fast:
            # the lock goes away 1.5 s from now, well after the deadline; the clock starts with
            # the timer (not after app start-up, which a loaded machine can slow)
            started = time.monotonic()
            threading.Timer(1.5, conn.rollback).start()
            r = fast.post("/v1/allocations", json={"budget": 10.0, "customers": customers(5)})
            waited = time.monotonic() - started
    finally:
        time.sleep(0.1)
        conn.close()
    assert r.status_code == 504, r.text
    assert r.json()["error"] == "RequestTimeout" and "0.5 s" in r.json()["detail"]
    assert "nothing was stored" in r.json()["detail"] and waited >= 1.4  # the work ran on
    with engine.connect() as check:
        assert check.execute(sa.text("SELECT count(*) FROM allocations")).scalar_one() == 0
        assert check.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one() == 0
    engine.dispose()
    # Once the lock is gone the same request succeeds.
    ok = client.post("/v1/allocations", json={"budget": 10.0, "customers": customers(5)})
    assert ok.status_code == 201


def test_corrupt_model_file_is_refused_and_previous_keeps_serving(
    client: TestClient, model_sources: dict[str, Path], customers: Any
) -> None:
    models_dir: Path = client.app.state.settings.models_dir  # type: ignore[attr-defined]
    assert client.post("/v1/models", json={"path": str(model_sources["v2"])}).status_code == 201
    body = {"budget": 10.0, "customers": customers(5)}
    for damage in ("truncate", "garbage", "card"):
        target = models_dir / "tiny-v2"
        shutil.rmtree(target)
        shutil.copytree(model_sources["v2"], target)
        if damage == "truncate":
            data = (target / "model.onnx").read_bytes()
            (target / "model.onnx").write_bytes(data[: len(data) // 2])
        elif damage == "garbage":
            (target / "model.onnx").write_bytes(b"\x00" * 4096)
        else:
            (target / "model.json").write_text("{not json")
        r = client.post("/v1/models/tiny-v2/activate")
        assert r.status_code == 422, (damage, r.text)
        assert r.json()["error"] == "InvalidModel"
        assert client.get("/v1/models/active").json()["version"] == "tiny-v1"
        out = client.post("/v1/allocations", json=body)
        assert out.status_code == 201 and out.json()["model_version"] == "tiny-v1"


def test_retraining_process_killed_is_failed_and_serving_continues(
    client: TestClient, settings: Settings, customers: Any, tmp_path: Path
) -> None:
    """SIGKILL the job's own process mid-run: the job ends failed with why, the service serves."""
    for day in range(2):  # logged decisions with outcomes, so the job has rows to train on
        people = customers(200, seed=day, prefix=f"d{day}-")
        body = {"budget": 2.0, "per_capita": True, "customers": people, "exploration_rate": 0.5}
        alloc = client.post("/v1/allocations", json=body).json()
        outcomes = [
            {"customer_id": d["customer_id"], "revenue": float(d["treatment"]), "cost": 0.5}
            for d in alloc["decisions"]
        ]
        url = f"/v1/allocations/{alloc['id']}/outcomes"
        assert client.post(url, json={"outcomes": outcomes}).status_code == 200
    retraining = settings.model_copy(update={"retrain_dir": tmp_path / "retrain"})
    with TestClient(create_app(retraining), headers=dict(client.headers)) as service:
        r = service.post("/v1/retrain", json={"config": {"epochs": 500, "hidden": [8]}})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        try:
            deadline = time.monotonic() + 60
            job = service.get(f"/v1/retrain/{job_id}").json()
            while job["status"] != "running" and time.monotonic() < deadline:
                assert job["status"] == "queued", job  # must not have finished on its own
                time.sleep(0.05)
                job = service.get(f"/v1/retrain/{job_id}").json()
            assert job["status"] == "running", job
            with service.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
                pid = session.get(RetrainJob, uuid.UUID(job_id)).pid  # the API does not show it
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while job["status"] == "running" and time.monotonic() < deadline:
                time.sleep(0.1)
                job = service.get(f"/v1/retrain/{job_id}").json()
            assert job["status"] == "failed" and f"pid {pid}" in job["error"], job
            assert job["new_version"] is None and not job["activated"]
            assert service.get("/readyz").json()["model_version"] == "tiny-v1"
            r = service.post("/v1/allocations", json={"budget": 5.0, "customers": customers(3)})
            assert r.status_code == 201 and r.json()["model_version"] == "tiny-v1"
            # The failed job no longer holds the one in-progress slot.
            assert service.get("/v1/retrain").json()[0]["status"] == "failed"
        finally:  # never leave a training process behind, whatever failed above
            with service.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
                left = session.get(RetrainJob, uuid.UUID(job_id))
                if left is not None and left.pid and process_alive(left.pid, left.id):
                    os.kill(left.pid, signal.SIGKILL)
