"""Bulk writes of decision rows: one path for the HTTP endpoints, campaigns and the batch job.

Decisions arrive as Arrow record batches (the batch job streams them from its Parquet output;
an HTTP request is one batch). PostgreSQL takes them by COPY in CSV, serialised by pyarrow;
SQLite by one executemany per batch on the raw connection. Either way no ORM object is built
per customer and the rows join the caller's transaction, so a failed write leaves nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from sqlalchemy.orm import Session

from app.schemas import FeatureValue

# The decisions table's columns in the order both paths write them.
DECISION_COLUMNS = (
    "allocation_id",
    "position",
    "customer_id",
    "treatment",
    "expected_revenue",
    "expected_cost",
    "propensity",
    "explored",
    "features",
)
STORED = DECISION_COLUMNS[1:]  # what a record batch carries (the allocation id is added here)


def decision_batch(
    customer_ids: Sequence[str],
    treatment: np.ndarray,
    expected_revenue: np.ndarray,
    expected_cost: np.ndarray,
    propensity: np.ndarray,
    explored: np.ndarray,
    features: Sequence[dict[str, FeatureValue]],
) -> pa.RecordBatch:
    """One request's decisions (N,) each, positions 0..N-1, features as JSON text."""
    n = len(customer_ids)
    return pa.record_batch(
        [
            pa.array(np.arange(n, dtype=np.int64)),
            pa.array(customer_ids, pa.string()),
            pa.array(np.asarray(treatment, dtype=np.int64)),
            pa.array(np.asarray(expected_revenue, dtype=np.float64)),
            pa.array(np.asarray(expected_cost, dtype=np.float64)),
            pa.array(np.asarray(propensity, dtype=np.float64)),
            pa.array(np.asarray(explored, dtype=bool)),
            pa.array([json.dumps(x) for x in features], pa.string()),
        ],
        names=list(STORED),
    )


def insert_decisions(
    session: Session, allocation_id: uuid.UUID, batches: Iterable[pa.RecordBatch]
) -> None:
    """Write every batch (columns `STORED`) as decisions of `allocation_id`, in the session's
    transaction: COPY (PostgreSQL) or executemany (SQLite)."""
    raw = session.connection().connection.driver_connection
    columns = ", ".join(DECISION_COLUMNS)
    if session.get_bind().dialect.name == "postgresql":
        cursor = raw.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY decisions ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
            for rb in batches:
                table = pa.table(
                    [pa.array([str(allocation_id)] * rb.num_rows), *rb.columns],
                    names=list(DECISION_COLUMNS),
                )
                sink = pa.BufferOutputStream()
                pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
                copy.write(sink.getvalue().to_pybytes())
        return
    marks = ", ".join("?" * len(DECISION_COLUMNS))
    cursor = raw.cursor()  # type: ignore[union-attr]
    sql = f"INSERT INTO decisions ({columns}) VALUES ({marks})"
    for rb in batches:
        cols = [c.to_pylist() for c in rb.columns]
        cursor.executemany(sql, zip([allocation_id.hex] * rb.num_rows, *cols, strict=True))
