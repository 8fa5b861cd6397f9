"""Rebuild decision-quality records from a benchmark log, for runs stopped before they wrote JSON.

Before the benchmark wrote its JSON after every method (commit 131fd15), a process stopped in
its second seed left only its log. Each log line holds one method's true revenue at the three
budgets, its training seconds, validation revenue and selected phase; this turns those lines
into records that `decision_quality.py --summarize` pools with other runs. Fields the log does
not hold (curves, costs, areas, uplift x) are absent, so those columns stay empty. Records of
methods that never reached the log (the ceiling and oracle) can be copied from a JSON of the
same data seed with --take.

    python benchmarks/records_from_log.py LOG --seeds 0 --out X.json \\
        --take results/decision_quality_deal_seekers_ceiling.json:pooled-unconfounded,oracle
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

LINE = re.compile(
    r"\[(?P<setting>[^\]]+) seed (?P<seed>\d+)\] (?P<method>\S+)\s+(?P<seconds>[\d.]+)s\s+"
    r"revenue (?P<revenue>[\d.]+ [\d.]+ [\d.]+)\s+val_rev (?P<val>[\d.]+) \((?P<phase>[^)]+)\)"
)


def parse(text: str) -> list[dict[str, Any]]:
    """One record per matching log line (the order of the log)."""
    return [
        {
            "setting": m["setting"],
            "seed": int(m["seed"]),
            "method": m["method"],
            "seconds": float(m["seconds"]),
            "true_revenue": [float(v) for v in m["revenue"].split()],
            "val_revenue": float(m["val"]),
            "selected_phase": m["phase"],
            "source": "log",
        }
        for m in LINE.finditer(text)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", help="keep these seeds only (comma separated)")
    parser.add_argument("--methods", help="keep these methods only (comma separated)")
    parser.add_argument(
        "--take",
        action="append",
        default=[],
        help="JSON:method,method — copy those methods' records (the kept seeds) from a result JSON",
    )
    args = parser.parse_args(argv)
    records = parse(Path(args.log).read_text())
    if not records:
        parser.error(f"{args.log}: no benchmark result lines")
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    methods = set(args.methods.split(",")) if args.methods else None
    records = [
        r
        for r in records
        if (seeds is None or r["seed"] in seeds) and (methods is None or r["method"] in methods)
    ]
    for spec in args.take:
        path, _, names = spec.partition(":")
        wanted = set(names.split(","))
        saved = json.loads(Path(path).read_text())["records"]
        taken = [
            {**r, "source": path}
            for r in saved
            if r["method"] in wanted and (seeds is None or r["seed"] in seeds)
        ]
        missing = wanted - {r["method"] for r in taken}
        if missing:
            parser.error(f"--take {path}: no records of {sorted(missing)} for the kept seeds")
        records += taken
    payload = {"command": " ".join(["python", *sys.argv]), "complete": True, "records": records}
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
