"""Load and crash check: concurrent clients against the real server, then the database is audited.

For each database it prepares a fresh one (SQLite file / new PostgreSQL database), registers and
activates a model, creates an API key, starts `uvicorn app.main:create_app` as a subprocess and
runs `--clients` concurrent clients (asyncio + httpx) sending POST /v1/allocations, each request
with its own Idempotency-Key, for `--seconds`. Afterwards it reads the database:

- lost: a 201 whose allocation is not stored (must be 0);
- partial: a stored allocation whose decision rows are not all there (must be 0);
- duplicated: a stored allocation no answered request accounts for, or two for one key (0);
- errors: any response other than 201, or a failed request (must be 0).

`--kill-after S` SIGKILLs the server S seconds into the load, restarts it and audits: requests cut
by the kill are not errors, but every 201 must be complete in the database and nothing partial.
Then each cut request is sent again with its Idempotency-Key: those that had committed replay
their stored response, the others are allocated now, so every request ends allocated once.

    python benchmarks/load.py                         # 50 clients, 20 s, SQLite and PostgreSQL
    python benchmarks/load.py --databases sqlite --clients 20 --seconds 5
    python benchmarks/load.py --kill-after 3          # crash check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.utils
from service import synthetic_model  # noqa: E402  (same folder; builds the 64x64 MLP)

from tests.utils.load import HEADER, ROOT, row, run_one  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "load.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--customers", type=int, default=20, help="Customers per request.")
    p.add_argument("--kill-after", type=float, default=0.0, help="SIGKILL the server after S s.")
    p.add_argument("--model-dir", type=Path, default=None, help="Default: synthetic 64x64 MLP.")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dfcl-load-"))
    try:
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = synthetic_model(work / "model")
        print(f"{os.cpu_count()} CPUs; latency is client side, per request", flush=True)
        print(HEADER, flush=True)
        results = []
        for kind in args.databases:
            summary = run_one(
                kind,
                work,
                model_dir,
                clients=args.clients,
                seconds=args.seconds,
                n_customers=args.customers,
                kill_after=args.kill_after,
            )
            results.append(summary)
            print(row(summary), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join(["python", "benchmarks/load.py", *(argv or sys.argv[1:])]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "results": results,
    }
    args.out.write_text(json.dumps(meta, indent=2))
    print(f"wrote {args.out}")
    bad = [
        r
        for r in results
        if r["errors"] or r["lost"] or r["partial"] or r["duplicated"] or r["mismatched"]
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
