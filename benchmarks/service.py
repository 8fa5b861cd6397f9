"""Service latency benchmark: real server subprocess, concurrent HTTP load from this process.

For each database (SQLite, then PostgreSQL) it starts `uvicorn app.main:create_app` on
127.0.0.1 with a fresh database and registry, registers + activates a model with the `dfcl`
CLI, then sends POST /v1/allocations with 100 / 1,000 / 10,000 customers from client threads
(bounded by request count and time). It reports client-side p50/p95/p99 latency, throughput,
and the server's own split (Server-Timing: encode, infer, solve, db insert, commit, and the
rest = HTTP + JSON parsing/validation + response serialisation).

    python benchmarks/service.py                      # both databases, writes results JSON
    python benchmarks/service.py --databases sqlite --sizes 1000 --requests 50

The model is `--model-dir` if given, else a synthetic MLP (8 numeric + 2 categorical raw
features, 64-64 hidden, K=5) exported here with torch (dev install).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: tests.utils holds the shared harness
from tests.utils.load import free_port, fresh_database  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "service.json"
STAGES = ("encode", "infer", "solve", "respond", "db", "commit")
TARGET_P99_MS = {1_000: 100.0, 10_000: 1_000.0}


def synthetic_model(out: Path) -> Path:
    """Export an MLP of realistic size in the model-directory contract."""
    import torch

    from app.core.features import FeatureSpec
    from app.core.model_card import ModelCard
    from training.export import write_model_dir

    numeric = tuple(f"x{i}" for i in range(8))
    cats = {
        "channel": ("Multichannel", "Phone", "Web"),
        "region": ("north", "south", "east", "west"),
    }
    spec = FeatureSpec(numeric=numeric, categorical=cats)
    k = 5
    torch.manual_seed(0)
    body = torch.nn.Sequential(
        torch.nn.Linear(spec.n_features, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 2 * k),
    )

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body
            self.register_buffer("cost_scale", torch.linspace(0.05, 1.0, k))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.body(x)  # (B, 2K)
            revenue = torch.nn.functional.softplus(h[:, :k]) * (1 + self.cost_scale)
            cost = self.cost_scale * (1 + torch.sigmoid(h[:, k:]))
            return revenue, cost

    card = ModelCard(
        version="bench-mlp-64x64-k5",
        method="synthetic",
        treatments=("control", *(f"t{j}" for j in range(1, k))),
        n_features=spec.n_features,
        feature_spec=spec.to_json(),
        outputs=ModelCard.declared_outputs(k),
        created_at="2026-11-25T12:00:00Z",
        package_version="0.1.0",
    )
    probe = np.random.default_rng(0).normal(size=(64, spec.n_features)).astype(np.float32)
    write_model_dir(Net().eval(), out, card, probe)  # the exporter `dfcl train` uses
    return out


def request_bodies(model_dir: Path, n: int, count: int, seed: int) -> list[bytes]:
    """`count` distinct pre-encoded bodies of n customers drawn from the model's feature spec."""
    from app.core.features import FeatureSpec

    card = json.loads((model_dir / "model.json").read_text())
    spec = FeatureSpec.from_json(card["feature_spec"])
    rng = np.random.default_rng(seed)
    bodies = []
    for b in range(count):
        cols: dict[str, list[Any]] = {
            name: np.round(rng.normal(0, 1, n), 3).tolist() for name in spec.numeric
        }
        for name, cats in spec.categorical.items():
            cols[name] = rng.choice([*cats, "unseen"], n).tolist()
        customers = [
            {"id": f"b{b}-{i}", "features": {name: cols[name][i] for name in cols}}
            for i in range(n)
        ]
        # Budget: ~40% of the spend that would give everyone their most expensive arm.
        bodies.append(json.dumps({"budget": 0.6 * n, "customers": customers}).encode())
    return bodies


def start_server(
    env: dict[str, str], port: int, workers: int, log: Path
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    cmd += ["--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"server not ready in 60 s: {log.read_text()[-2000:]}")


def load(
    url: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    requests: int,
    max_s: float,
    key: str = "",
) -> dict[str, Any]:
    """Send `requests` POSTs from `concurrency` threads (stop early after max_s)."""
    lock = threading.Lock()
    latencies: list[float] = []
    stages: list[dict[str, float]] = []
    errors: list[str] = []
    counter = iter(range(requests))
    deadline = time.monotonic() + max_s
    auth = f"Bearer {key}"

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = client.post(
                    url,
                    content=bodies[i % len(bodies)],
                    headers={"content-type": "application/json", "authorization": auth},
                )
                dt = (time.perf_counter() - t) * 1e3
                with lock:
                    if r.status_code != 201:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    latencies.append(dt)
                    timing = dict(
                        p.strip().split(";dur=") for p in r.headers["server-timing"].split(",")
                    )
                    stages.append({k: float(v) for k, v in timing.items()})

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.array(latencies)
    split = {k: float(np.mean([s.get(k, 0.0) for s in stages])) for k in (*STAGES, "total")}
    split["http_json"] = split["total"] - sum(split[k] for k in STAGES)
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "throughput_rps": len(latencies) / wall,
        "server_mean_ms": split,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="dfcl-bench-"))
    model_dir = args.model_dir or synthetic_model(work / "model")
    results: dict[str, Any] = {}
    for kind in args.databases:
        url, cleanup = fresh_database(kind, work)
        env = {
            **os.environ,
            "DFCL_DATABASE_URL": url,
            "DFCL_MODELS_DIR": str(work / f"models-{kind}"),
        }
        env["DFCL_MAX_CUSTOMERS"] = str(max(args.sizes))
        subprocess.run(
            [sys.executable, "-m", "app.cli", "models", "register", str(model_dir), "--activate"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        created = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--scope", "allocate"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        key = created.stdout.decode().split()[0]
        port = free_port()
        proc = start_server(env, port, args.workers, work / f"server-{kind}.log")
        try:
            url_alloc = f"http://127.0.0.1:{port}/v1/allocations"
            for n in args.sizes:
                bodies = request_bodies(model_dir, n, 4, seed=n)
                load(url_alloc, bodies, concurrency=1, requests=3, max_s=30, key=key)  # warm-up
                for concurrency in args.concurrency:
                    conc = concurrency if n < 10_000 else max(1, concurrency // 2)
                    reqs = args.requests if n < 10_000 else max(10, args.requests // 5)
                    res = load(
                        url_alloc,
                        bodies,
                        concurrency=conc,
                        requests=reqs,
                        max_s=args.max_s,
                        key=key,
                    )
                    res.update(n_customers=n, concurrency=conc, database=kind)
                    results[f"{kind}/{n}/c{conc}"] = res
                    print_row(res)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            cleanup()
    shutil.rmtree(work, ignore_errors=True)
    return results


HEADER = (
    f"{'db':8} {'N':>6} {'conc':>4} {'reqs':>5} {'err':>3} {'p50':>8} {'p95':>8} {'p99':>8} "
    f"{'req/s':>7} | {'encode':>7} {'infer':>6} {'solve':>6} {'respond':>7} {'db':>6} "
    f"{'commit':>6} {'http+json':>9}"
)


def print_row(r: dict[str, Any]) -> None:
    s = r["server_mean_ms"]
    target = TARGET_P99_MS.get(r["n_customers"])
    mark = (
        ""
        if target is None
        else ("  ok" if r["p99_ms"] <= target else f"  > {target:.0f} ms target")
    )
    print(
        f"{r['database']:8} {r['n_customers']:>6} {r['concurrency']:>4} {r['requests']:>5} "
        f"{r['errors']:>3} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} "
        f"{r['throughput_rps']:>7.1f} | {s['encode']:>7.1f} {s['infer']:>6.1f} {s['solve']:>6.1f} "
        f"{s['respond']:>7.1f} "
        f"{s['db']:>6.1f} {s['commit']:>6.1f} {s['http_json']:>9.1f}{mark}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    p.add_argument("--sizes", nargs="+", type=int, default=[100, 1_000, 10_000])
    p.add_argument(
        "--concurrency", nargs="+", type=int, default=[2, 4], help="Client threads (halved at 10k)."
    )
    p.add_argument("--requests", type=int, default=200, help="Requests per size (/5 at 10k).")
    p.add_argument("--max-s", type=float, default=60.0, help="Time cap per size.")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes.")
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    print(f"latency in ms (client side); server split = mean ms per request; {os.cpu_count()} CPUs")
    print(HEADER)
    results = run(args)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "workers": args.workers,
        "model": str(args.model_dir) if args.model_dir else "synthetic MLP 64x64, K=5, F=17",
        "targets_p99_ms": TARGET_P99_MS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
