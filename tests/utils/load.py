"""The load and crash-check harness behind `benchmarks/load.py` and tests/api/test_load.py.

It prepares a fresh database (SQLite file / new PostgreSQL database), registers and activates a
model, creates an API key, starts `uvicorn app.main:create_app` as a subprocess and runs
concurrent clients (asyncio + httpx) sending POST /v1/allocations, each request with its own
Idempotency-Key. Afterwards it audits the database:

- lost: a 201 whose allocation is not stored (must be 0);
- partial: a stored allocation whose decision rows are not all there (must be 0);
- duplicated: a stored allocation no answered request accounts for, or two for one key (0);
- errors: any response other than 201, or a failed request (must be 0).

With `kill_after` the server is SIGKILLed mid-load, restarted and audited: requests cut by the
kill are not errors, but every 201 must be complete in the database and nothing partial. Then
each cut request is sent again with its Idempotency-Key: those that had committed replay their
stored response, the others are allocated now, so every request ends allocated once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get(
    "DFCL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@dataclass
class Target:
    """A prepared database with an active model and an API key, and how to drop it."""

    kind: str
    url: str
    models_dir: Path
    key: str
    cleanup: Callable[[], None]


def fresh_database(kind: str, work: Path) -> tuple[str, Callable[[], None]]:
    """A new empty database: a SQLite file under `work`, or a new PostgreSQL database."""
    if kind == "sqlite":
        return f"sqlite:///{work / 'load.db'}", lambda: None
    name = f"dfcl_load_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False), drop


def prepare(kind: str, work: Path, model_dir: Path) -> Target:
    """Fresh database at head, `model_dir` registered + active, an allocate+read key."""
    from app.config import Settings
    from app.db import make_engine, make_sessionmaker, prepare_schema
    from app.registry import Registry
    from app.services import keys, models

    work.mkdir(parents=True, exist_ok=True)
    url, cleanup = fresh_database(kind, work)
    settings = Settings(database_url=url, models_dir=work / "models")
    engine = make_engine(settings)
    try:
        prepare_schema(engine, settings)
        with make_sessionmaker(engine)() as session, session.begin():
            row = models.register(session, Registry(settings.models_dir), model_dir)
            models.activate(session, Registry(settings.models_dir), row.version)
            _, key = keys.create(session, ["allocate", "read"], name="load")
    finally:
        engine.dispose()
    return Target(kind, url, settings.models_dir, key, cleanup)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`uvicorn app.main:create_app` in its own process group, on a free port."""

    def __init__(self, target: Target, log: Path, workers: int = 1) -> None:
        self.target, self.log, self.workers = target, log, workers
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        env = {
            **os.environ,
            "DFCL_DATABASE_URL": self.target.url,
            "DFCL_MODELS_DIR": str(self.target.models_dir),
            "DFCL_LOG_LEVEL": "warning",
        }
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
        cmd += ["--log-level", "warning", "--no-access-log"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def request_bodies(
    model_dir: Path, n_customers: int, count: int, seed: int
) -> list[dict[str, Any]]:
    """`count` request bodies of n customers with features drawn from the model's spec."""
    from app.core.features import FeatureSpec

    spec = FeatureSpec.from_json(json.loads((model_dir / "model.json").read_text())["feature_spec"])
    rng = np.random.default_rng(seed)
    bodies = []
    for b in range(count):
        cols: dict[str, list[Any]] = {
            name: np.round(rng.gamma(2.0, 3.0, n_customers), 2).tolist() for name in spec.numeric
        }
        for name, cats in spec.categorical.items():
            cols[name] = rng.choice([*cats, "unseen"], n_customers).tolist()
        customers = [
            {"id": f"b{b}-{i}", "features": {name: cols[name][i] for name in cols}}
            for i in range(n_customers)
        ]
        bodies.append({"budget": 0.8 * n_customers, "customers": customers})
    return bodies


@dataclass
class LoadResult:
    """What the clients saw."""

    campaign: str
    n_customers: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    created: dict[str, str] = field(default_factory=dict)  # idempotency key -> allocation id
    errors: list[str] = field(default_factory=list)
    cut: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> body, died with server
    replayed: int = 0  # cut requests whose retry got the stored response (they had committed)


async def _client(
    http: httpx.AsyncClient,
    bodies: list[dict[str, Any]],
    result: LoadResult,
    worker: int,
    stop_at: float,
    killed: asyncio.Event,
) -> None:
    i = 0
    while time.monotonic() < stop_at and not killed.is_set():
        key = f"{result.campaign}-{worker}-{i}"
        body = {**bodies[(worker + i) % len(bodies)], "campaign": result.campaign}
        started = time.perf_counter()
        try:
            r = await http.post("/v1/allocations", json=body, headers={"Idempotency-Key": key})
        except httpx.HTTPError as exc:
            if killed.is_set():
                result.cut[key] = body
            else:
                result.errors.append(f"{type(exc).__name__}: {exc}")
            return
        result.latencies_ms.append((time.perf_counter() - started) * 1e3)
        if r.status_code == 201:
            result.created[key] = r.json()["id"]
        else:
            result.errors.append(f"{r.status_code}: {r.text[:200]}")
        i += 1


def retry_cut(server: Server, result: LoadResult) -> None:
    """After the restart, resend every request the kill cut off, with its Idempotency-Key.

    A request whose transaction committed before the kill gets its stored response back
    (Idempotent-Replayed); one that did not is allocated now. Either way exactly once.
    """
    headers = {"Authorization": f"Bearer {server.target.key}"}
    with httpx.Client(base_url=server.base, headers=headers, timeout=120) as http:
        for key, body in result.cut.items():
            r = http.post("/v1/allocations", json=body, headers={"Idempotency-Key": key})
            if r.status_code != 201:
                result.errors.append(f"retry {r.status_code}: {r.text[:200]}")
                continue
            result.created[key] = r.json()["id"]
            result.replayed += r.headers.get("idempotent-replayed") == "true"


async def _load(
    server: Server, bodies: list[dict[str, Any]], clients: int, seconds: float, kill_after: float
) -> LoadResult:
    result = LoadResult(
        campaign=f"load-{uuid.uuid4().hex[:8]}", n_customers=len(bodies[0]["customers"])
    )
    killed = asyncio.Event()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {server.target.key}"}
    async with httpx.AsyncClient(
        base_url=server.base, headers=headers, limits=limits, timeout=120
    ) as http:
        started = time.monotonic()
        tasks = [
            asyncio.create_task(_client(http, bodies, result, w, started + seconds, killed))
            for w in range(clients)
        ]
        if kill_after > 0:
            await asyncio.sleep(kill_after)
            killed.set()
            await asyncio.to_thread(server.kill)
        await asyncio.gather(*tasks)
        result.seconds = time.monotonic() - started
    return result


def audit(url: str, result: LoadResult) -> dict[str, int]:
    """Compare what the clients were told with what the database holds."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                sa.text(
                    "SELECT a.id, a.n_customers, count(d.position) FROM allocations a "
                    "LEFT JOIN decisions d ON d.allocation_id = a.id "
                    "WHERE a.campaign = :c GROUP BY a.id, a.n_customers"
                ),
                {"c": result.campaign},
            ).all()
            records = conn.execute(
                sa.text("SELECT key, response FROM idempotency_records WHERE key LIKE :p"),
                {"p": f"{result.campaign}-%"},
            ).all()
    finally:
        engine.dispose()
    ids = {str(uuid.UUID(str(row[0]))): (row[1], row[2]) for row in stored}
    recorded = {key: json.loads(body)["id"] for key, body in records}
    answered = set(result.created.values())
    return {
        "ok": len(result.created),
        "stored": len(ids),
        "lost": len(answered - set(ids)),
        "partial": sum(1 for n, got in ids.values() if n != got),
        # Every stored allocation is one idempotency record (same transaction), one per key.
        "duplicated": len(set(ids) - set(recorded.values()))
        + (len(recorded) - len(set(recorded.values()))),
        "mismatched": sum(1 for k, a in result.created.items() if recorded.get(k) != a),
    }


def summarise(result: LoadResult, counts: dict[str, int], clients: int) -> dict[str, Any]:
    lat = np.asarray(result.latencies_ms)
    return {
        "clients": clients,
        "n_customers": result.n_customers,
        "seconds": round(result.seconds, 2),
        "requests": int(lat.size),
        "throughput_rps": round(len(result.created) / result.seconds, 1) if result.seconds else 0,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "errors": len(result.errors),
        "error_examples": result.errors[:3],
        "cut_by_kill": len(result.cut),
        "cut_replayed": result.replayed,
        **counts,
    }


def run_one(
    kind: str,
    work: Path,
    model_dir: Path,
    *,
    clients: int,
    seconds: float,
    n_customers: int,
    kill_after: float = 0.0,
) -> dict[str, Any]:
    """One database: prepare, serve, load (optionally SIGKILL + restart), audit, clean up."""
    target = prepare(kind, work / kind, model_dir)
    server = Server(target, work / f"{kind}-server.log")
    try:
        server.start()
        bodies = request_bodies(model_dir, n_customers, 16, seed=0)
        result = asyncio.run(_load(server, bodies, clients, seconds, kill_after))
        if kill_after > 0:
            server.start()  # recovery after the crash (SQLite: WAL replay)
            before_retry = audit(target.url, result)  # the crash state: 201s stored whole?
            retry_cut(server, result)
            after = audit(target.url, result)
            summary = summarise(result, after, clients)
            summary["after_kill"] = before_retry
            summary["partial"] = max(after["partial"], before_retry["partial"])
            summary["lost"] = max(after["lost"], before_retry["lost"])
            summary.update(database=kind, killed=True)
            return summary
        summary = summarise(result, audit(target.url, result), clients)
        summary.update(database=kind, killed=kill_after > 0)
        return summary
    finally:
        server.stop()
        target.cleanup()


HEADER = (
    f"{'db':13} {'clients':>7} {'N':>4} {'secs':>5} {'ok':>6} {'stored':>6} {'req/s':>7} "
    f"{'p50 ms':>7} "
    f"{'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'lost':>4} {'partial':>7} {'dup':>4} {'cut':>4} "
    f"{'replayed':>8}"
)


def row(s: dict[str, Any]) -> str:
    db = s["database"] + ("+kill" if s["killed"] else "")
    return (
        f"{db:13} {s['clients']:>7} {s['n_customers']:>4} {s['seconds']:>5.1f} {s['ok']:>6} "
        f"{s['stored']:>6} "
        f"{s['throughput_rps']:>7.1f} {s['p50_ms'] or 0:>7.1f} {s['p95_ms'] or 0:>7.1f} "
        f"{s['p99_ms'] or 0:>7.1f} {s['errors']:>6} {s['lost']:>4} {s['partial']:>7} "
        f"{s['duplicated']:>4} {s['cut_by_kill']:>4} {s['cut_replayed']:>8}"
    )
