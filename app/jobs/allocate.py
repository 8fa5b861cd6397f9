"""Campaign-scale allocation: one budget across a customer table of any size.

The same code path serves `dfcl allocate` and the REST job (`POST /v1/allocation-jobs`):

1. reading: the table (Parquet or CSV: one file, or a directory of them read in name order) is
   read in chunks of `settings.batch_chunk_rows`. Each chunk is checked (the id column and the
   model's raw feature columns; no empty, non-numeric or non-finite numeric feature; ids of at
   most 128 characters without NUL), encoded column-wise with the model's FeatureSpec and scored
   by onnxruntime. Scored chunks are spilled to the job's work directory, so the model runs once
   per customer. Duplicate ids are checked over the whole table once it is read. Nothing is
   stored before every row has passed.
2. solving: exploration by the rule of `POST /v1/allocations` (services/exploration.py; the
   draw is a hash of seed and row position, so it does not depend on chunking), then the exact
   chunked solve of `app/core/batch.py` over the spill: a handful of passes, the same assignment
   `allocate()` would give on all predictions at once.
3. writing: decisions Parquet through pyarrow, one row group per chunk.
4. storing (optional): the allocation and every decision in ONE transaction (COPY on
   PostgreSQL, one executemany on SQLite), so a failed, cancelled or killed job leaves nothing.

Memory: one chunk at a time, plus the ids (for the duplicate check) and what the solver
collects (app/core/batch.py). The engine decides where chunks live and where passes run:
`LocalTable` (this host, a spill file) or `app.jobs.ray_engine.RayTable` (Ray Data).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.core import batch
from app.core._types import FloatArray, IntArray
from app.core.features import MAX_ABS, OTHER, FeatureError, FeatureSpec
from app.core.solver import InfeasibleBudget, dual_choice
from app.db import begin_write, make_engine, make_sessionmaker
from app.errors import InvalidInput, ModelOutputInvalid
from app.inference import OnnxModel
from app.registry import Registry
from app.services import models
from app.services.decision_rows import STORED, insert_decisions
from app.services.exploration import ExplorationInfeasible, draw, new_seed
from app.tables import Allocation

Phase = Literal["queued", "reading", "solving", "writing", "storing", "done"]
S = TypeVar("S")

ID = "customer_id"  # the id column's name inside scored blocks and decisions
ROW = "_row"  # global row key: position in the input table
MAX_ID_CHARS = 128  # decisions.customer_id is VARCHAR(128)
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class BatchRequest:
    """What to allocate: a customer table (file or directory of .parquet / .csv) and a budget."""

    source: Path
    budget: float
    per_capita: bool = False
    model_version: str | None = None  # None: the active model
    campaign: str | None = None
    exploration_rate: float = 0.0
    seed: int | None = None  # None with exploration: a fresh seed (stored)
    id_column: str = "customer_id"
    engine: Literal["local", "ray"] = "local"


@dataclass(frozen=True)
class Progress:
    """Where a running job is; `fraction` is an overall 0..1 estimate."""

    phase: Phase
    rows_read: int
    rows_scored: int
    fraction: float


@dataclass(frozen=True)
class BatchResult:
    """A finished job: the allocation it stored (if any) and where its decisions are."""

    allocation_id: uuid.UUID | None  # None when not stored
    model_version: str
    n_customers: int
    n_explored: int
    seed: int | None
    lam: float
    revenue: float  # total predicted revenue of the decisions
    cost: float  # total predicted cost (<= budget_total)
    budget_total: float
    decisions_path: Path  # Parquet: position, customer_id, treatment, treatment_name, ...
    timings_s: dict[str, float] = field(default_factory=dict)  # per phase
    solver_stats: dict[str, int] = field(default_factory=dict)


class BatchInputError(InvalidInput):
    """The customer table cannot be allocated; the message names the column and first bad row."""


class JobCancelled(Exception):
    """`cancelled()` said stop; nothing was stored."""


# ------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    """The files of one customer table, in the order their rows are numbered."""

    files: tuple[Path, ...]
    format: Literal["parquet", "csv"]

    @classmethod
    def open(cls, path: Path) -> Source:
        """A file, or a directory of files of one format (hidden and _-prefixed ones skipped)."""
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in FORMATS
                and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
            )  # fmt: skip
            if not files:
                raise BatchInputError(f"{path} holds no .parquet or .csv file")
        elif path.is_file():
            files = [path]
        else:
            raise BatchInputError(f"input {path} does not exist")
        formats = {FORMATS.get(p.suffix.lower()) for p in files}
        if len(formats) != 1 or None in formats:
            raise BatchInputError(
                f"input {path}: expected .parquet or .csv files of one format, got "
                f"{sorted({p.suffix or '(none)' for p in files})}"
            )
        fmt = formats.pop()
        return cls(tuple(files), "parquet" if fmt == "parquet" else "csv")

    def n_rows_hint(self) -> int | None:
        """Total rows from Parquet footers (None for CSV: unknown until read)."""
        if self.format != "parquet":
            return None
        try:
            return sum(int(pq.ParquetFile(f).metadata.num_rows) for f in self.files)
        except (pa.ArrowException, OSError) as exc:
            raise BatchInputError(f"input is not readable Parquet: {exc}") from None

    def batches(self, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        """Record batches of at most `rows` rows with exactly `columns`, file after file."""
        for path in self.files:
            try:
                yield from self._file_batches(path, columns, rows)
            except pa.ArrowException as exc:
                raise BatchInputError(f"{path.name}: cannot read: {exc}") from None

    def _file_batches(self, path: Path, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            file = pq.ParquetFile(path)
            _require(file.schema_arrow.names, columns, path)
            yield from file.iter_batches(batch_size=rows, columns=columns)
            return
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns, include_missing_columns=False,
                column_types={columns[0]: pa.string()},
            ),
        )  # fmt: skip
        _require(reader.schema.names, columns, path)
        for block in reader:
            for lo in range(0, block.num_rows, rows):
                yield block.slice(lo, rows)


def _require(have: list[str], columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in have]
    if missing:
        raise BatchInputError(f"{path.name}: missing column {missing[0]!r} (needs {columns})")


# ---------------------------------------------------------------------- checking and scoring


def _bad_row(mask: np.ndarray, first_row: int) -> int:
    return first_row + int(np.argmax(mask))


def _numeric_column(name: str, column: pa.Array, first_row: int) -> FloatArray:
    """A numeric feature as float64; empty, unparsable or non-finite values name their row."""
    if column.null_count:
        bad = column.is_null().to_numpy(zero_copy_only=False)
        raise BatchInputError(f"column {name!r}: row {_bad_row(bad, first_row)} is empty")
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            parsed = pc.cast(column, pa.float64())
        except pa.ArrowInvalid:
            ok = pc.match_substring_regex(
                pc.utf8_trim_whitespace(column),
                r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|nan)$",
                ignore_case=True,
            ).to_numpy(zero_copy_only=False)
            row = _bad_row(~ok, first_row)
            raise BatchInputError(
                f"column {name!r}: row {row} is not numeric ({column[row - first_row]})"
            ) from None
        values = parsed.to_numpy(zero_copy_only=False)
    else:
        raise BatchInputError(f"column {name!r}: type {kind} is not numeric (row {first_row})")
    bad = ~np.isfinite(values)
    if bad.any():
        row = _bad_row(bad, first_row)
        raise BatchInputError(
            f"column {name!r}: row {row} is not finite ({values[row - first_row]!r})"
        )
    big = np.abs(values) > MAX_ABS
    if big.any():
        row = _bad_row(big, first_row)
        raise BatchInputError(
            f"column {name!r}: row {row} is out of range ({values[row - first_row]:.3g}; "
            f"features must satisfy |x| <= {MAX_ABS:g}, as on POST /v1/allocations)"
        )
    return np.asarray(values, dtype=np.float64)


def _category_column(column: pa.Array) -> np.ndarray:
    """A categorical feature as a numpy str array; empty values go to the '<other>' slot."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    return np.asarray(pc.fill_null(column, OTHER).to_numpy(zero_copy_only=False), dtype=str)


def _ids(column: pa.Array, name: str, first_row: int) -> pa.Array:
    """The id column as strings; empty, over-long or NUL-carrying ids name their row."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        if pa.types.is_floating(column.type):
            raise BatchInputError(
                f"column {name!r}: ids must be text or integers, not {column.type}"
            )
        column = column.cast(pa.string())
    checks = (
        (column.is_null(), "is empty"),
        (pc.equal(pc.utf8_length(column), 0), "is empty"),
        (pc.greater(pc.utf8_length(column), MAX_ID_CHARS), f"is over {MAX_ID_CHARS} characters"),
        (pc.match_substring(column, "\x00"), "holds a NUL character"),
    )
    for mask, why in checks:
        flags = pc.fill_null(mask, True).to_numpy(zero_copy_only=False)
        if flags.any():
            raise BatchInputError(f"column {name!r}: row {_bad_row(flags, first_row)} {why}")
    return column.cast(pa.string())


def _features_json(names: list[str], columns: dict[str, np.ndarray]) -> pa.Array:
    """One JSON object per row ({"feature": value, ...}), built column-wise in Arrow."""
    pieces: list[Any] = []
    for i, name in enumerate(names):
        values = columns[name]
        if values.dtype.kind == "f":
            text = pc.cast(pa.array(values), pa.string())
        else:
            text = pa.array(values, type=pa.string())
            if pc.any(pc.match_substring_regex(text, "[\\x00-\\x1f]")).as_py():
                escaped = [json.dumps(str(v)) for v in values]  # rare: control characters
                text = pa.array(escaped, type=pa.string())
            else:
                text = pc.binary_join_element_wise(
                    '"', pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"'),
                    '"', "",
                )  # fmt: skip
        pieces += [("{" if i == 0 else ",") + json.dumps(name) + ":", text]
    pieces.append("}" if names else "{}")
    return pc.binary_join_element_wise(*pieces, "")


def score_batch(
    record: pa.RecordBatch | pa.Table,
    model: OnnxModel,
    id_column: str,
    first_row: int,
    *,
    with_features: bool,
) -> pa.Table:
    """Check, encode and score one chunk -> a scored block (row key, id, predictions, features).

    Pure apart from the model call; every engine scores with it. Errors name column and row.
    """
    spec: FeatureSpec = model.spec
    ids = _ids(record.column(id_column), id_column, first_row)
    columns: dict[str, np.ndarray] = {}
    for name in spec.numeric:
        columns[name] = _numeric_column(name, record.column(name), first_row)
    for name in spec.categorical:
        columns[name] = _category_column(record.column(name))
    try:
        x = spec.encode(columns)  # (n, F) float32
    except FeatureError as exc:  # rows in the message are the chunk's: make them the table's
        text = re.sub(r"\brow (\d+)", lambda m: f"row {first_row + int(m.group(1))}", str(exc))
        raise BatchInputError(text) from None
    if not np.isfinite(x).all():  # finite in float64 but not in float32 (|x| > 3.4e38)
        row, col = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
        name = spec.encoded_names[col]
        raise BatchInputError(
            f"column {name!r}: row {first_row + row} is outside float32's range (|x| < 3.4e38)"
        )
    revenue, cost = model.predict(x)
    finite = np.isfinite(revenue).all(axis=1) & np.isfinite(cost).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise ModelOutputInvalid(
            f"model {model.version} predicted a non-finite value for customer "
            f"{ids[row].as_py()!r} (row {first_row + row})"
        )
    n, k = revenue.shape
    arrays: dict[str, Any] = {
        ROW: pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
        ID: ids,
        # float32: the graph's own output type (predict widens it), so this halves the spill
        # that every solver pass reads, losslessly.
        "revenue": pa.FixedSizeListArray.from_arrays(
            pa.array(revenue.astype(np.float32).ravel()), k
        ),
        "cost": pa.FixedSizeListArray.from_arrays(pa.array(cost.astype(np.float32).ravel()), k),
    }
    if k > 1:  # every solver pass needs each customer's hull: compute it once, here
        path, slope, dcost = batch.hull_of(revenue, cost)
        arrays["hull_path"] = _fixed(path.T.astype(np.int8), k)
        arrays["hull_slope"] = _fixed(slope.T, k - 1)
        arrays["hull_dcost"] = _fixed(dcost.T, k - 1)
    if with_features:
        arrays["features"] = _features_json(spec.raw_columns, columns)
    return pa.table(arrays)


def _fixed(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    """(n, width) -> one fixed-size-list column (a row's values stay together)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).ravel()), width)


def _matrix(block: pa.Table, name: str) -> np.ndarray:
    """A fixed-size-list column back to (n, width)."""
    col = block.column(name).combine_chunks()
    values: np.ndarray = col.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, col.type.list_size)


def chunk_of(block: pa.Table) -> batch.Chunk:
    """The solver's view of a scored block: row keys, predictions and the cached hulls."""
    rows, revenue, cost = predictions(block)
    hull = None
    if "hull_path" in block.column_names:
        path = _matrix(block, "hull_path").astype(np.int64)
        slope, dcost = _matrix(block, "hull_slope"), _matrix(block, "hull_dcost")
        hull = (path.T, slope.T, dcost.T)
    return batch.Chunk(rows, revenue, cost, hull)


def predictions(block: pa.Table) -> tuple[IntArray, FloatArray, FloatArray]:
    """Row keys (n,), revenue and cost (n, K) of a scored block (zero-copy where possible)."""
    rows = block.column(ROW).to_numpy()
    out = []
    for name in ("revenue", "cost"):
        col = block.column(name).combine_chunks()
        k = col.type.list_size
        values = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
        out.append(values.astype(np.float64))
    return np.asarray(rows, dtype=np.int64), out[0], out[1]


# ------------------------------------------------------------------------ passes over blocks


@dataclass(frozen=True)
class Exploration:
    """The exploration draw of one job: seed, rate and number of arms."""

    seed: int
    rate: float
    k: int

    def draw(self, rows: IntArray) -> tuple[np.ndarray, IntArray]:
        if self.rate == 0.0:
            return np.zeros(rows.size, dtype=bool), np.zeros(rows.size, dtype=np.int64)
        return draw(self.seed, rows, self.rate, self.k)


class BlockPass(Protocol[S]):
    """A pure function of one scored block and an associative merge (see app/core/batch.py)."""

    def map(self, block: pa.Table) -> S: ...

    def reduce(self, a: S, b: S) -> S: ...


@dataclass(frozen=True)
class OnRest(BlockPass[S]):
    """Runs a solver pass on the customers of each block that exploration left to the solver."""

    inner: batch.Pass[S]
    exploration: Exploration

    def map(self, block: pa.Table) -> S:
        chunk = chunk_of(block)
        return self.inner.map(chunk.take(~self.exploration.draw(chunk.rows)[0]))

    def reduce(self, a: S, b: S) -> S:
        return self.inner.reduce(a, b)


@dataclass(frozen=True)
class ExploreSums:
    n: int
    n_explored: int
    explored_cost: float
    rest_min_cost: float


@dataclass(frozen=True)
class ExploreTotals:
    """Customers, explored customers, their drawn arms' cost and the rest's cheapest cost."""

    exploration: Exploration

    def map(self, block: pa.Table) -> ExploreSums:
        rows, _, cost = predictions(block)
        explored, arm = self.exploration.draw(rows)
        drawn_cost = cost[np.flatnonzero(explored), arm[explored]]
        return ExploreSums(
            rows.size, int(explored.sum()), float(drawn_cost.sum()),
            float(cost[~explored].min(axis=1).sum()) if (~explored).any() else 0.0,
        )  # fmt: skip

    def reduce(self, a: ExploreSums, b: ExploreSums) -> ExploreSums:
        return ExploreSums(
            a.n + b.n, a.n_explored + b.n_explored,
            a.explored_cost + b.explored_cost, a.rest_min_cost + b.rest_min_cost,
        )  # fmt: skip


@dataclass(frozen=True)
class Decide:
    """The write pass: a scored block -> its decisions block (what is stored and downloaded)."""

    plan: batch.Plan | None  # None when exploration took every customer
    exploration: Exploration
    lam: float
    treatments: tuple[str, ...]

    def __call__(self, block: pa.Table) -> pa.Table:
        chunk = chunk_of(block)  # converted once: the plan and the columns below share it
        rows, revenue, cost = chunk.rows, chunk.revenue, chunk.cost
        explored, arm = self.exploration.draw(rows)
        rest = ~explored
        treatment = arm.copy()
        if self.plan is not None and rest.any():
            treatment[rest] = self.plan.choose(chunk.take(rest))
        rate, k = self.exploration.rate, self.exploration.k
        greedy = treatment.copy()
        if explored.any():
            greedy[explored] = dual_choice(revenue[explored], cost[explored], self.lam)
        propensity = (1.0 - rate) * (treatment == greedy) + rate / k
        at = np.arange(rows.size)
        names = pa.array(self.treatments, type=pa.string())
        out = {
            "position": pa.array(rows),
            ID: block.column(ID),
            "treatment": pa.array(treatment.astype(np.int32)),
            "treatment_name": pc.take(names, pa.array(treatment)),
            "expected_revenue": pa.array(revenue[at, treatment]),
            "expected_cost": pa.array(cost[at, treatment]),
            "propensity": pa.array(propensity.astype(np.float64)),
            "explored": pa.array(explored),
        }
        if "features" in block.column_names:
            out["features"] = block.column("features")
        return pa.table(out)


# --------------------------------------------------------------------------------- engines


class ScoredTable(Protocol):
    """Scored blocks of one job, wherever an engine keeps them."""

    n_rows: int

    def map_reduce(self, p: BlockPass[S]) -> S: ...

    def write(self, decide: Decide, path: Path, cancelled: Callable[[], bool]) -> None: ...

    def close(self) -> None: ...


class LocalTable:
    """Scored blocks in one Arrow IPC spill file on this host; passes run in this process."""

    def __init__(self, path: Path, n_rows: int) -> None:
        self.path = path
        self.n_rows = n_rows

    def blocks(self) -> Iterator[pa.Table]:
        with pa.OSFile(str(self.path)) as f:
            reader = ipc.open_file(f)
            for i in range(reader.num_record_batches):
                yield pa.Table.from_batches([reader.get_batch(i)])

    def map_reduce(self, p: BlockPass[S]) -> S:
        out = batch.tree_reduce((p.map(block) for block in self.blocks()), p.reduce)
        if out is None:
            raise BatchInputError("the customer table has no rows")
        return out

    def write(self, decide: Decide, path: Path, cancelled: Callable[[], bool]) -> None:
        writer: pq.ParquetWriter | None = None
        try:
            for block in self.blocks():
                if cancelled():
                    raise JobCancelled()
                table = decide(block)
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def score_local(
    source: Source,
    model: OnnxModel,
    request: BatchRequest,
    *,
    chunk_rows: int,
    spill: Path,
    with_features: bool,
    progress: Callable[[int], None],
    cancelled: Callable[[], bool],
) -> LocalTable:
    """Read, check and score the table chunk by chunk into a spill file; check ids once."""
    columns = [request.id_column, *model.spec.raw_columns]
    if len(set(columns)) != len(columns):
        raise BatchInputError(f"id column {request.id_column!r} is also a model feature")
    writer: ipc.RecordBatchFileWriter | None = None
    ids: list[pa.Array] = []
    n = 0
    try:
        for record in source.batches(columns, chunk_rows):
            if cancelled():
                raise JobCancelled()
            block = score_batch(record, model, request.id_column, n, with_features=with_features)
            if writer is None:
                writer = ipc.new_file(str(spill), block.schema)
            writer.write_table(block)
            ids.append(block.column(ID).combine_chunks())
            n += block.num_rows
            progress(n)
        if writer is not None:
            writer.close()
            writer = None
        if n == 0:
            raise BatchInputError(f"{source.files[0].name}: the customer table has no rows")
        check_unique(ids, request.id_column)
    except BaseException:
        if writer is not None:
            writer.close()
        spill.unlink(missing_ok=True)
        raise
    return LocalTable(spill, n)


def check_unique(ids: list[pa.Array], name: str) -> None:
    """Refuse a table whose ids repeat, naming the first row that repeats an earlier one."""
    encoded = pa.chunked_array(ids, type=pa.string()).combine_chunks().dictionary_encode()
    if len(encoded.dictionary) == len(encoded):  # as many distinct ids as rows: all unique
        return
    codes_np = encoded.indices.to_numpy()
    _, first = np.unique(codes_np, return_index=True)
    if first.size != codes_np.size:
        seen = np.zeros(codes_np.size, dtype=bool)
        seen[first] = True
        row = int(np.argmin(seen))
        original = int(first[np.searchsorted(np.unique(codes_np), codes_np[row])])
        raise BatchInputError(
            f"column {name!r}: row {row} repeats the id of row {original} "
            f"({pa.chunked_array(ids)[row].as_py()!r}); ids must be unique"
        )


# ------------------------------------------------------------------------------ the job


def _resolve_model(
    factory: Callable[[], Session], settings: Settings, version: str | None
) -> OnnxModel:
    registry = Registry(settings.models_dir, threads=settings.inference_threads or 0)
    with factory() as session:
        return models.resolve(session, registry, version)


def run_batch(
    request: BatchRequest,
    *,
    settings: Settings,
    workdir: Path,
    store: bool,
    on_progress: Callable[[Progress], None] = lambda p: None,
    cancelled: Callable[[], bool] = lambda: False,
    on_commit: Callable[[Session, uuid.UUID], None] | None = None,
) -> BatchResult:
    """Read, validate, score, solve exactly, write decisions Parquet under `workdir`, store.

    With `store`, the allocation and all its decisions are inserted in ONE transaction on
    settings.database_url; `on_commit(session, allocation_id)` runs inside it just before the
    commit (the REST job marks its row succeeded there, atomically). Raises BatchInputError
    (before anything is stored), InfeasibleBudget / ExplorationInfeasible, JobCancelled.
    """
    _check_request(request)
    workdir.mkdir(parents=True, exist_ok=True)
    db = make_engine(settings)
    try:
        return _run(request, settings, workdir, store, on_progress, cancelled, on_commit, db)
    finally:
        db.dispose()


def _run(
    request: BatchRequest,
    settings: Settings,
    workdir: Path,
    store: bool,
    on_progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
    on_commit: Callable[[Session, uuid.UUID], None] | None,
    db: Engine,
) -> BatchResult:
    timings: dict[str, float] = {}
    clock = perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    factory = make_sessionmaker(db)
    model = _resolve_model(factory, settings, request.model_version)
    source = Source.open(request.source)
    total_hint = source.n_rows_hint()

    def reading(rows: int) -> None:
        share = rows / total_hint if total_hint else 0.0
        on_progress(Progress("reading", rows, rows, 0.6 * min(share, 1.0)))

    on_progress(Progress("reading", 0, 0, 0.0))
    table: ScoredTable
    if request.engine == "ray":
        from app.jobs import ray_engine  # type: ignore[attr-defined,unused-ignore]  # [scale]

        table = ray_engine.score(
            source, model, request, settings=settings, workdir=workdir,
            with_features=store, progress=reading, cancelled=cancelled,
        )  # fmt: skip
    else:
        table = score_local(
            source, model, request, chunk_rows=settings.batch_chunk_rows,
            spill=workdir / "scored.arrow", with_features=store, progress=reading,
            cancelled=cancelled,
        )  # fmt: skip
    decisions_path = workdir / "decisions.parquet"
    try:
        lap("read_score")
        n = table.n_rows
        on_progress(Progress("solving", n, n, 0.6))
        if cancelled():
            raise JobCancelled()
        rate = float(request.exploration_rate)
        seed = (request.seed if request.seed is not None else new_seed()) if rate > 0 else None
        exploration = Exploration(seed or 0, rate, model.n_treatments)
        total = _total(request, n)
        plan, lam, sums = solve_table(table, exploration, total)
        lap("solve")
        on_progress(Progress("writing", n, n, 0.7))
        decide = Decide(plan, exploration, lam, model.treatments)
        table.write(decide, decisions_path, cancelled)
        lap("write_parquet")
        revenue, cost = _totals(decisions_path)
        result = BatchResult(
            None, model.version, n, sums.n_explored, seed, lam, revenue, cost, total,
            decisions_path, timings, dict(plan.stats) if plan else {},
        )  # fmt: skip
        if store:
            on_progress(Progress("storing", n, n, 0.8))
            if cancelled():
                raise JobCancelled()
            allocation_id = store_result(factory, request, result, on_commit)
            lap("store")
            result = BatchResult(**{**result.__dict__, "allocation_id": allocation_id})
        on_progress(Progress("done", n, n, 1.0))
        return result
    except BaseException:
        remove_output(decisions_path)
        raise
    finally:
        table.close()


def _check_request(request: BatchRequest) -> None:
    budget = request.budget
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not np.isfinite(budget):
        raise InvalidInput(f"budget must be a finite number, got {budget!r}")
    if budget < 0:
        raise InvalidInput(f"budget must be >= 0, got {budget!r}")
    if not 0.0 <= request.exploration_rate <= 1.0:
        raise InvalidInput(f"exploration_rate must lie in [0, 1], got {request.exploration_rate}")


def _total(request: BatchRequest, n: int) -> float:
    total = float(request.budget) * (n if request.per_capita else 1)
    if not np.isfinite(total):
        raise InvalidInput(f"budget {request.budget!r} per customer over {n} customers overflows")
    return total


def solve_table(
    table: ScoredTable, exploration: Exploration, total: float
) -> tuple[batch.Plan | None, float, ExploreSums]:
    """Exploration's budget rule, then the exact solve of the rest (services/exploration.py)."""
    sums = table.map_reduce(ExploreTotals(exploration))

    def engine_for(ex: Exploration) -> batch.Engine:
        class _Engine:
            def __call__(self, p: batch.Pass[S]) -> S:
                return table.map_reduce(OnRest(p, ex))

        return _Engine()

    if exploration.rate == 0.0:
        plan = batch.solve(engine_for(exploration), total)
        return plan, plan.lam, sums
    remaining = total - sums.explored_cost
    rest = sums.n - sums.n_explored
    needed = sums.explored_cost + max(sums.rest_min_cost, 0.0)
    if remaining < max(sums.rest_min_cost, 0.0) * (1 - batch.SUM_RTOL):
        raise ExplorationInfeasible(
            f"budget {total:.12g} is too small for this exploration draw: the "
            f"{sums.n_explored} explored customers' predicted cost {sums.explored_cost:.12g} "
            f"leaves {remaining:.12g}, but the other {rest} need at least "
            f"{max(sums.rest_min_cost, 0.0):.12g}; this draw needs a budget of {needed:.12g} "
            "(raise the budget or lower exploration_rate)",
            min_budget=needed,
        )
    if rest == 0:  # everyone explored: price cost as the plain solver would
        try:
            lam = batch.solve(engine_for(Exploration(0, 0.0, exploration.k)), total).lam
        except InfeasibleBudget:
            lam = 0.0
        return None, lam, sums
    plan = batch.solve(engine_for(exploration), remaining)
    return plan, plan.lam, sums


def _totals(path: Path) -> tuple[float, float]:
    """Total predicted revenue and cost of the written decisions."""
    revenue = cost = 0.0
    for part in _parts(path):
        with pq.ParquetFile(part) as f:
            for rb in f.iter_batches(columns=["expected_revenue", "expected_cost"]):
                revenue += float(pc.sum(rb.column(0)).as_py() or 0.0)
                cost += float(pc.sum(rb.column(1)).as_py() or 0.0)
    return revenue, cost


def _parts(path: Path) -> list[Path]:
    """A decisions output: one Parquet file (local engine) or a directory of parts (Ray)."""
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def remove_output(path: Path) -> None:
    """Delete a decisions output, file or directory of parts."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- storing


def store_result(
    factory: Callable[[], Session],
    request: BatchRequest,
    result: BatchResult,
    on_commit: Callable[[Session, uuid.UUID], None] | None,
) -> uuid.UUID:
    """The allocation row and every decision in one transaction (COPY / executemany)."""
    allocation = Allocation(
        id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        campaign=request.campaign,
        model_version=result.model_version,
        budget=float(request.budget),
        per_capita=request.per_capita,
        budget_total=result.budget_total,
        multiplier=result.lam,
        n_customers=result.n_customers,
        expected_revenue=result.revenue,
        expected_cost=result.cost,
        exploration_rate=float(request.exploration_rate),
        seed=result.seed,
        n_explored=result.n_explored,
    )
    with factory() as session, session.begin():
        begin_write(session)
        session.add(allocation)
        session.flush()
        insert_decisions(session, allocation.id, _stored_batches(_parts(result.decisions_path)))
        if on_commit is not None:
            on_commit(session, allocation.id)
    return allocation.id


def _stored_batches(parts: list[Path]) -> Iterator[pa.RecordBatch]:
    for part in parts:
        with pq.ParquetFile(part) as f:
            yield from f.iter_batches(batch_size=65_536, columns=list(STORED))
