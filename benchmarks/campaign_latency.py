"""Campaign decision latency and capacity: a real uvicorn process, one-customer decisions.

For each database (SQLite, then PostgreSQL) it prepares a fresh database with a registered and
active model (the synthetic MLP of benchmarks/service.py: 8 numeric + 2 categorical features,
64-64 hidden, K=5), starts `uvicorn --factory app.main:create_app` with 1 worker (what
`dfcl serve` runs), creates ONE campaign with a large budget (planned on a sample of 1,000
customers) and sends POST /v1/campaigns/{id}/decisions with one customer each:

- open loop: requests are *scheduled* at a fixed offered rate (default 200/s) whatever the
  server does; latency is measured from the scheduled send time, so queueing behind a slow
  request counts (no coordinated omission). Target p99 <= 15 ms.
- closed loop: 20 clients each send their next request as soon as the previous one answers;
  the throughput is the capacity. Target >= 800 decisions/s. (1 client: the latency of one
  decision with no queueing; GET /healthz with 20 clients: what the HTTP stack alone serves on
  this machine, a ceiling for context; 20 clients sending batches of 10 customers: decisions/s
  when callers can group arrivals.)
- exhaust (correctness under concurrency): a second campaign whose budget pays ~300 decisions'
  chosen arms, hammered by the same 20 clients until it answers 409 / gives the cheapest arm;
  afterwards the stored decisions' predicted cost must not pass the budget (no outcomes are
  recorded, so the calibration is 1 and committed spend = summed predicted cost).

The clients are a minimal asyncio HTTP/1.1 keep-alive client on pre-encoded requests (about a
tenth of httpx's CPU per request), so on a 2-core machine the load generator takes as little as
possible from the server it measures; its CPU time is reported.

    .venv/bin/python benchmarks/campaign_latency.py                 # both databases
    .venv/bin/python benchmarks/campaign_latency.py --databases sqlite --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: tests.utils holds the shared harness
from tests.utils.load import Server, prepare  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "campaign_latency.json"
TARGET_P99_MS = 15.0
TARGET_RPS = 800.0


def _service_module() -> Any:
    """benchmarks/service.py (not a package): its synthetic model and request bodies."""
    spec = importlib.util.spec_from_file_location("bench_service", ROOT / "benchmarks/service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def customers(model_dir: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """n customers drawn from the model's feature spec (one JSON object each)."""
    body = json.loads(_service_module().request_bodies(model_dir, n, 1, seed)[0])
    return body["customers"]  # type: ignore[no-any-return]


class RawClient:
    """One keep-alive HTTP/1.1 connection sending pre-encoded requests (minimal parsing)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length)
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def encode(path: str, key: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\ncontent-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def open_loop(
    port: int, requests: list[bytes], rate: float, seconds: float, max_conn: int = 64
) -> dict[str, Any]:
    """Offered load `rate`/s for `seconds`; latency from each request's scheduled time."""
    n = int(rate * seconds)
    pool: asyncio.Queue[RawClient] = asyncio.Queue()
    for _ in range(max_conn):
        pool.put_nowait(RawClient(port))
    latency = np.full(n, np.nan)
    service = np.full(n, np.nan)
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def one(i: int) -> None:
        due = start + i / rate
        await asyncio.sleep(max(due - loop.time(), 0.0))
        client = await pool.get()
        sent = loop.time()
        try:
            status, _ = await client.send(requests[i % len(requests)])
        finally:
            pool.put_nowait(client)
        done = loop.time()
        statuses[status] = statuses.get(status, 0) + 1
        if status == 201:
            latency[i], service[i] = (done - due) * 1e3, (done - sent) * 1e3

    cpu = time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = loop.time() - start
    cpu = time.process_time() - cpu
    while not pool.empty():
        pool.get_nowait().close()
    ok = latency[np.isfinite(latency)]
    return {
        "mode": "open",
        "offered_rps": rate,
        "requests": n,
        "ok": int(ok.size),
        "errors": n - int(ok.size),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "achieved_rps": round(ok.size / wall, 1),
        **_percentiles(ok),
        "service_p99_ms": _percentiles(service[np.isfinite(service)])["p99_ms"],
        "max_ms": round(float(ok.max()), 1) if ok.size else None,
        "client_cpu_share": round(cpu / wall, 3),
    }


async def closed_loop(
    port: int, requests: list[bytes], clients: int, seconds: float, ok_status: int = 201
) -> dict[str, Any]:
    """`clients` connections, each sending its next request as soon as one answers."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        client = RawClient(port)
        try:
            while loop.time() < stop:
                t = loop.time()
                status, _ = await client.send(requests[next(counter) % len(requests)])
                statuses[status] = statuses.get(status, 0) + 1
                if status == ok_status:
                    latencies.append((loop.time() - t) * 1e3)
        finally:
            client.close()

    cpu, t0 = time.process_time(), loop.time()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall, cpu = loop.time() - t0, time.process_time() - cpu
    lat = np.asarray(latencies)
    return {
        "mode": "closed",
        "clients": clients,
        "requests": sum(statuses.values()),
        "ok": int(lat.size),
        "errors": sum(v for s, v in statuses.items() if s != ok_status),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "achieved_rps": round(lat.size / wall, 1),
        **_percentiles(lat),
        "client_cpu_share": round(cpu / wall, 3),
    }


async def exhaust(port: int, requests: list[bytes], clients: int) -> dict[str, int]:
    """Hammer a small-budget campaign until every client got a 409 (budget spent)."""
    counts: dict[int, int] = {}
    counter = iter(range(10**9))

    async def worker() -> None:
        client = RawClient(port)
        try:
            for _ in range(2_000):
                status, body = await client.send(requests[next(counter) % len(requests)])
                counts[status] = counts.get(status, 0) + 1
                if status == 409:
                    return
                if status != 201:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        finally:
            client.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return {str(k): v for k, v in sorted(counts.items())}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, load: Any) -> dict[str, Any]:
    """Run one measurement; add the server's CPU ms per answered request (load-independent:
    what one decision costs the server's process, whoever else shares the machine)."""
    before = cpu_seconds(pid)
    res: dict[str, Any] = asyncio.run(load)
    res["server_cpu_ms_per_request"] = round(
        (cpu_seconds(pid) - before) * 1e3 / max(res["requests"], 1), 3
    )
    return res


def _percentiles(ms: np.ndarray) -> dict[str, float | None]:
    if ms.size == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "p99_ms": round(p99, 2)}


def audit_spend(url: str, campaign_id: str) -> dict[str, float]:
    """Stored decisions' predicted cost of one campaign (its committed spend: no outcomes)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            spent, n = conn.execute(
                sa.text(
                    "SELECT coalesce(sum(d.expected_cost), 0), count(*) FROM decisions d "
                    "JOIN allocations a ON a.id = d.allocation_id WHERE a.campaign_id = :c"
                ),
                {"c": uuid.UUID(campaign_id) if engine.dialect.name != "sqlite"
                 else uuid.UUID(campaign_id).hex},
            ).one()  # fmt: skip
    finally:
        engine.dispose()
    return {"stored_spend": float(spent), "stored_decisions": int(n)}


def run_database(kind: str, work: Path, model_dir: Path, args: argparse.Namespace) -> list[Any]:
    target = prepare(kind, work / kind, model_dir)
    server = Server(target, work / f"{kind}-server.log", workers=1)
    rows: list[dict[str, Any]] = []
    try:
        server.start()
        http = httpx.Client(
            base_url=server.base, headers={"authorization": f"Bearer {target.key}"}, timeout=120
        )
        people = customers(model_dir, 5_000, seed=1)
        expected = 10**8
        r = http.post(
            "/v1/campaigns",
            json={
                "name": f"latency-{kind}", "budget": 0.6 * expected,
                "expected_customers": expected, "exploration_rate": args.exploration_rate,
                "plan_sample": customers(model_dir, 1_000, seed=2),
            },
        )  # fmt: skip
        r.raise_for_status()
        campaign = r.json()
        path = f"/v1/campaigns/{campaign['id']}/decisions"
        requests = [encode(path, target.key, {"customers": [p]}) for p in people]
        asyncio.run(closed_loop(server.port, requests, 4, 3.0))  # warm-up
        # Context: what the framework alone serves (auth-free GET /healthz, 20 clients).
        probe = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
        pid = server.proc.pid if server.proc is not None else os.getpid()
        res = measured(pid, closed_loop(server.port, [probe], 20, min(args.seconds, 10.0), 200))
        rows.append({"database": kind, **res, "mode": "healthz"})
        print_row(rows[-1])
        for rate in args.rates:
            res = measured(pid, open_loop(server.port, requests, rate, args.seconds))
            rows.append({"database": kind, **res})
            print_row(rows[-1])
        for clients in args.clients:
            res = measured(pid, closed_loop(server.port, requests, clients, args.seconds))
            rows.append({"database": kind, **res})
            print_row(rows[-1])
        for size in args.batch_sizes:  # context: the same 20 clients deciding small batches
            batches = [
                encode(path, target.key, {"customers": people[i : i + size]})
                for i in range(0, len(people) - size + 1, size)
            ]
            res = measured(pid, closed_loop(server.port, batches, 20, args.seconds))
            res["batch"] = size
            res["decisions_per_s"] = round(res["achieved_rps"] * size, 1)
            rows.append({"database": kind, **res, "mode": f"batch{size}"})
            print_row(rows[-1])
        # Correctness: a budget for ~300 decisions' chosen arms, 20 clients racing for it.
        small = http.post(
            "/v1/campaigns",
            json={"name": f"exhaust-{kind}", "budget": 150.0, "expected_customers": 300,
                  "plan_multiplier": 0.0},
        ).json()  # fmt: skip
        path = f"/v1/campaigns/{small['id']}/decisions"
        statuses = asyncio.run(
            exhaust(server.port, [encode(path, target.key, {"customers": [p]}) for p in people], 20)
        )
        state = http.get(f"/v1/campaigns/{small['id']}").json()
        audit = audit_spend(target.url, small["id"])
        over = audit["stored_spend"] > small["budget"] * (1 + 1e-9)
        rows.append(
            {
                "database": kind, "mode": "exhaust", "clients": 20, "statuses": statuses,
                "budget": small["budget"], "committed_spend": state["committed_spend"],
                "n_budget_exhausted": state["n_budget_exhausted"], **audit, "overspent": over,
            }
        )  # fmt: skip
        print(
            f"{kind:8} exhaust  20 clients: statuses {statuses}; stored spend "
            f"{audit['stored_spend']:.4f} of budget {small['budget']:g} over "
            f"{audit['stored_decisions']} decisions ({state['n_budget_exhausted']} hard-stopped)"
            f"{'  OVERSPENT' if over else '  ok (never above the budget)'}",
            flush=True,
        )
        http.close()
    finally:
        server.stop()
        target.cleanup()
    return rows


HEADER = (
    f"{'db':8} {'mode':7} {'load':>10} {'ok':>6} {'err':>4} {'dec/s':>7} {'p50':>7} {'p95':>7} "
    f"{'p99':>7} {'client cpu':>10} {'srv cpu ms':>10}  target"
)


def print_row(r: dict[str, Any]) -> None:
    if r["mode"] == "open":
        load = f"{r['offered_rps']:g}/s"
        ok = r["p99_ms"] is not None and r["p99_ms"] <= TARGET_P99_MS
        mark = f"p99 <= {TARGET_P99_MS:g} ms: {'met' if ok else 'MISSED'}"
    elif r["mode"].startswith("batch"):
        load = f"{r['clients']} clients"
        mark = f"(context: {r['decisions_per_s']:g} decisions/s in batches of {r['batch']})"
    elif r["mode"] == "healthz" or r["clients"] != 20:
        load, mark = f"{r['clients']} clients", "(context, no target)"
    else:
        load = f"{r['clients']} clients"
        ok = r["achieved_rps"] >= TARGET_RPS
        mark = f">= {TARGET_RPS:g}/s: {'met' if ok else 'MISSED'}"
    print(
        f"{r['database']:8} {r['mode']:7} {load:>10} {r['ok']:>6} {r['errors']:>4} "
        f"{r['achieved_rps']:>7.1f} {r['p50_ms'] or 0:>7.2f} {r['p95_ms'] or 0:>7.2f} "
        f"{r['p99_ms'] or 0:>7.2f} {r['client_cpu_share']:>10.2f} "
        f"{r['server_cpu_ms_per_request']:>10.2f}  {mark}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    p.add_argument("--rates", nargs="+", type=float, default=[200.0], help="Open-loop rates/s.")
    p.add_argument("--clients", nargs="+", type=int, default=[1, 20], help="Closed-loop clients.")
    p.add_argument(
        "--batch-sizes", nargs="*", type=int, default=[10], help="Context: customers per call."
    )
    p.add_argument("--seconds", type=float, default=20.0, help="Per measurement.")
    p.add_argument("--exploration-rate", type=float, default=0.05)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dfcl-campaign-bench-"))
    model_dir = _service_module().synthetic_model(work / "model")
    print(
        f"one-customer decisions, 1 uvicorn worker, {os.cpu_count()} CPUs; latency in ms "
        "(open loop: from the scheduled send time)"
    )
    print(HEADER)
    rows: list[Any] = []
    try:
        for kind in args.databases:
            rows += run_database(kind, work, model_dir, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "command": " ".join([".venv/bin/python", "benchmarks/campaign_latency.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "workers": 1,
        "model": "synthetic MLP 64x64, K=5, F=17 (benchmarks/service.py)",
        "targets": {"open_loop_p99_ms": TARGET_P99_MS, "closed_loop_rps": TARGET_RPS},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
