"""The Ray engine of allocation jobs (`--engine ray`, `DFCL_BATCH_ENGINE=ray`; the [scale] extra).

It runs the job of app/jobs/allocate.py on a Ray cluster and returns the very assignment of the
local engine, row for row. What it changes is only *where* work happens:

1. reading: `ray.data.read_parquet` (or `read_csv`) on the table's files in name order, with
   `preserve_order`, materialized in the object store.
2. row keys: allocate breaks exact ties by row, so each customer's key must be its position in
   the input, as in the local engine. Ray Data cannot number rows inside `map_batches`, and its
   `zip` with a range is deprecated, so the driver reads every raw block's row count from the
   block metadata, takes the running sum as the block's first row, and one task per block cuts
   it into pieces of `batch_chunk_rows` rows carrying a `_row` column. The pieces are also the
   partitioning: tasks of every later pass get one scored block of about that size, whatever
   the file sizes are.
3. scoring: `map_batches(_score)` over the pieces, which calls allocate.py's own `score_batch`
   with the batch's first row, so checks, error messages (column and row) and scored blocks
   equal the local engine's. onnxruntime loads the model once per worker process (a cache in
   the worker) rather than in an actor class: actors would hold every CPU until Ray Data lets
   them go and leave fresh worker processes to the passes, which measured 2.5 s slower per job
   on 2 cores at 1M rows. The model's files travel in the task arguments, so workers need no
   shared disk for them.
4. solving: allocate.py's passes (a pure `map` of one block and an associative `reduce`) run as
   one Ray task per scored block; their results are reduced by a tree of Ray tasks, in block
   order, so the driver receives one small summary per pass and the float sums do not depend
   on which task finished first.
5. writing: one task per block applies the plan (`Decide`); the driver writes each result as a
   part file `part-00000.parquet`, ... in block order (a directory at the decisions path), a
   few blocks ahead at most. Writing on the driver keeps the decisions where the store phase
   and the download endpoint read them, with or without a disk shared with the workers.

Cluster: `ray.init(address=settings.ray_address)` when set, else a local Ray sized to this
machine; either is started once per process and stopped at its exit (Ray's own atexit hook),
so a CLI run leaves nothing running. On a real cluster the customer table must be on a path
every node can read, and the workers need this package (same version) installed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.config import Settings
from app.core.model_card import CARD_FILE, GRAPH_FILE
from app.errors import DomainError
from app.inference import OnnxModel
from app.jobs.allocate import (
    ID,
    ROW,
    BatchInputError,
    BatchRequest,
    BlockPass,
    Decide,
    JobCancelled,
    Source,
    check_unique,
    score_batch,
)

S = TypeVar("S")

FAN_IN = 8  # results one reduce task merges: a tree of depth log8(blocks)
AHEAD_PER_CPU = 2  # write pass: blocks decided ahead of the driver's writer, per cluster CPU
_init_lock = threading.Lock()


class EngineUnavailable(DomainError):
    """Ray is not installed (the [scale] extra) or the cluster cannot be reached."""

    status_code = 503


def _ray() -> Any:
    """The `ray` module; imported lazily so the service and the local engine never load it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise EngineUnavailable(
            "the ray engine needs the [scale] extra: pip install 'dfcl[scale]'"
        ) from None
    return ray


def connect(settings: Settings, *, num_cpus: int | None = None) -> None:
    """Join `settings.ray_address`, or start a local Ray once per process (`num_cpus` workers).

    Later calls only re-apply the Ray Data options below, so a test or a job process pays Ray's
    start-up (a few seconds) once. Ray stops with the process: nothing is left running after a
    CLI run.
    """
    ray = _ray()
    with _init_lock:
        if not ray.is_initialized():
            quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
            try:
                if settings.ray_address:
                    ray.init(address=settings.ray_address, **quiet)
                else:
                    cpus = num_cpus or os.cpu_count() or 1
                    ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = settings.ray_address or "a local Ray"
                raise EngineUnavailable(f"cannot start or join {where}: {exc}") from None
        # Process-wide Ray Data options, set on every call in case someone else started Ray.
        context = ray.data.DataContext.get_current()
        # Row keys and part files follow block order: keep it through every operator.
        context.execution_options.preserve_order = True
        # A bad row's BatchInputError must reach the driver as itself, not as "UDF failed".
        context.raise_original_map_exception = True
        context.enable_progress_bars = False  # the job reports its own progress
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # Known and reported otherwise: our own switch-off, and bad rows (raised as errors).
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        executor_log = logging.getLogger("ray.data._internal.execution.streaming_executor_state")
        if not any(isinstance(f, _DomainErrorFilter) for f in executor_log.filters):
            executor_log.addFilter(_DomainErrorFilter())


class _DomainErrorFilter(logging.Filter):
    """Drops Ray Data's log of a task error that is the job's own (a bad row): the job raises
    it as one line; a traceback on stderr would only repeat it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DomainError))


def _cluster_cpus() -> int:
    return max(1, int(_ray().cluster_resources().get("CPU", 1)))


# ------------------------------------------------------------------------- worker functions
# Module-level functions: Ray pickles them by reference, workers import this module.


@dataclass(frozen=True)
class Span:
    """Rows [start, stop) of one block in the object store (a Ray Data bundle may slice one)."""

    ref: Any  # ray.ObjectRef[pa.Table]
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def _view(block: pa.Table, start: int, stop: int) -> pa.Table:
    return block if start == 0 and stop == block.num_rows else block.slice(start, stop - start)


def _pieces(
    block: pa.Table, start: int, stop: int, first_row: int, rows: int
) -> pa.Table | tuple[pa.Table, ...]:
    """Rows [start, stop) of a raw block cut into pieces of `rows`, numbered from `first_row`."""
    out = []
    for lo in range(start, stop, rows):
        piece = block.slice(lo, min(rows, stop - lo))
        keys = np.arange(first_row + lo - start, first_row + lo - start + piece.num_rows)
        out.append(piece.append_column(ROW, pa.array(keys, type=pa.int64())))
    return out[0] if len(out) == 1 else tuple(out)


_MODELS: OrderedDict[str, OnnxModel] = OrderedDict()
_MODELS_KEPT = 2  # model versions a worker process keeps loaded (LRU)


def _load(files: dict[str, bytes], key: str) -> OnnxModel:
    """The model of `files`, loaded once per worker process and kept for later batches."""
    model = _MODELS.get(key)
    if model is None:
        directory = Path(tempfile.mkdtemp(prefix="dfcl-model-"))
        try:
            for name, data in files.items():
                (directory / name).write_bytes(data)
            model = OnnxModel.load(directory, threads=1)  # one thread per worker process
        finally:  # onnxruntime holds the graph in memory from here on
            shutil.rmtree(directory, ignore_errors=True)
        _MODELS[key] = model
        while len(_MODELS) > _MODELS_KEPT:
            _MODELS.popitem(last=False)
    _MODELS.move_to_end(key)
    return model


def _score(
    batch: pa.Table, files: dict[str, bytes], key: str, id_column: str, with_features: bool
) -> pa.Table:
    """map_batches' function: a batch of consecutive raw rows (with `_row`) -> a scored block.

    It calls allocate.py's `score_batch` with the batch's first row, so the checks, the error
    messages (column and row) and the block equal the local engine's.
    """
    keys = batch.column(ROW).to_numpy()
    first = int(keys[0])
    if keys[-1] - first != keys.size - 1:  # order is preserved, so this cannot happen
        raise RuntimeError(f"rows of one batch are not consecutive (from row {first})")
    record = batch.drop_columns([ROW]).combine_chunks()
    model = _load(files, key)
    return score_batch(record, model, id_column, first, with_features=with_features)


def _map_span(p: BlockPass[S], block: pa.Table, start: int, stop: int) -> S:
    return p.map(_view(block, start, stop))


def _reduce_all(p: BlockPass[S], *parts: S) -> S:
    out = parts[0]
    for part in parts[1:]:
        out = p.reduce(out, part)
    return out


def _ids_of(block: pa.Table, start: int, stop: int) -> pa.Table:
    """The id column alone, as a table (Ray ships tables zero-copy, arrays by pickle)."""
    return _view(block, start, stop).select([ID])


def _decide_span(decide: Decide, block: pa.Table, start: int, stop: int) -> pa.Table:
    return decide(_view(block, start, stop))


_REMOTE: dict[str, Any] = {}


def _remote(fn: Callable[..., Any]) -> Any:
    """`ray.remote(fn)`, made once per process (a call, not a decorator: ray is untyped)."""
    if fn.__name__ not in _REMOTE:
        _REMOTE[fn.__name__] = _ray().remote(fn)
    return _REMOTE[fn.__name__]


# --------------------------------------------------------------------------- driver helpers


def _spans(dataset: Any) -> Iterator[list[Span]]:
    """The blocks of each bundle Ray Data produces, in order, with their rows from metadata.

    `iter_internal_ref_bundles` is Ray Data's (developer) API for the object refs of a dataset
    and their block metadata; it streams, so the caller can report progress and stop.
    """
    for bundle in dataset.iter_internal_ref_bundles():
        spans = []
        for ref, meta, cut in zip(bundle.block_refs, bundle.metadata, bundle.slices, strict=True):
            if cut is not None:
                spans.append(Span(ref, int(cut.start_offset), int(cut.end_offset)))
            elif meta.num_rows is not None:
                spans.append(Span(ref, 0, int(meta.num_rows)))
            else:  # not filled in by this datasource: count it
                spans.append(Span(ref, 0, int(_ray().get(_remote(_num_rows).remote(ref)))))
        yield spans


def _num_rows(block: pa.Table) -> int:
    return int(block.num_rows)


_RETRY_NOTE = "\nFailed to "  # Ray Data appends "Failed to <what> after n/m attempts ..."


def _cause(exc: BaseException) -> BaseException:
    """The job's own error inside Ray's wrappers (RayTaskError and the like), if there is one.

    With `raise_original_map_exception` a task's BatchInputError comes back as the `cause` of a
    RayTaskError; the job raises it as itself, so callers see the local engine's exceptions.
    """
    wrapper = _ray().exceptions.RayError
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DomainError | JobCancelled) and not isinstance(e, wrapper):
            if e.args and isinstance(e.args[0], str):  # drop Ray Data's appended retry note
                e.args = (e.args[0].split(_RETRY_NOTE, 1)[0], *e.args[1:])
            return e
        todo += [e.__context__, e.__cause__, getattr(e, "cause", None)]
    return exc


def _reraise(exc: Exception) -> NoReturn:
    """Raise the job's own error found in `exc` (see `_cause`), else `exc` itself."""
    cause = _cause(exc)
    if cause is exc:
        raise exc
    raise cause from exc


def _ordered(submit: Callable[[int], Any], n: int, ahead: int) -> Iterator[Any]:
    """Results of `submit(0..n-1)` in order, with at most `ahead` tasks in flight."""
    ray = _ray()
    pending: deque[Any] = deque()
    for i in range(n):
        pending.append(submit(i))
        if len(pending) >= ahead:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


def _read(source: Source, columns: list[str]) -> Any:
    """The raw table as a Ray Dataset, files in name order, after checking their columns."""
    ray = _ray()
    files = [str(f) for f in source.files]
    for path in source.files:
        try:
            if source.format == "parquet":
                have = pq.read_schema(path).names
            else:
                have = pacsv.open_csv(path).schema.names
        except (pa.ArrowException, OSError) as exc:
            raise BatchInputError(f"{path.name}: cannot read: {exc}") from None
        missing = [c for c in columns if c not in have]
        if missing:
            raise BatchInputError(f"{path.name}: missing column {missing[0]!r} (needs {columns})")
    if source.format == "parquet":
        return ray.data.read_parquet(files).select_columns(columns)  # pushed into the read
    # Whole-file CSV reads: ids stay text (as in the local engine); other types are inferred.
    options = pacsv.ConvertOptions(include_columns=columns, column_types={columns[0]: pa.string()})
    return ray.data.read_csv(files, convert_options=options)


# -------------------------------------------------------------------------------- the table


class RayTable:
    """Scored blocks of one job in Ray's object store; passes run as Ray tasks (ScoredTable)."""

    def __init__(self, spans: list[Span], n_rows: int) -> None:
        self.spans = spans
        self.n_rows = n_rows

    def map_reduce(self, p: BlockPass[S]) -> S:
        """One task per block, then a tree of reduce tasks in block order; one `ray.get`."""
        ray = _ray()
        if not self.spans:
            raise BatchInputError("the customer table has no rows")
        pass_ref = ray.put(p)  # shipped once, not once per task
        parts = [_remote(_map_span).remote(pass_ref, s.ref, s.start, s.stop) for s in self.spans]
        while len(parts) > 1:
            parts = [
                _remote(_reduce_all).remote(pass_ref, *parts[i : i + FAN_IN])
                for i in range(0, len(parts), FAN_IN)
            ]
        try:
            result: S = ray.get(parts[0])
        except Exception as exc:
            _reraise(exc)
        return result

    def write(self, decide: Decide, path: Path, cancelled: Callable[[], bool]) -> None:
        """Decisions as a directory of part files, one per block in order (removed on failure)."""
        ray = _ray()
        path.mkdir(parents=True, exist_ok=False)
        decide_ref = ray.put(decide)
        spans = self.spans

        def submit(i: int) -> Any:
            s = spans[i]
            return _remote(_decide_span).remote(decide_ref, s.ref, s.start, s.stop)

        try:
            results = _ordered(submit, len(spans), AHEAD_PER_CPU * _cluster_cpus())
            for i, table in enumerate(results):
                if cancelled():
                    raise JobCancelled()
                pq.write_table(table, path / f"part-{i:05d}.parquet")
        except Exception as exc:
            shutil.rmtree(path, ignore_errors=True)
            _reraise(exc)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def close(self) -> None:
        """Drop the references: Ray frees the scored blocks (Ray itself keeps running)."""
        self.spans = []


def score(
    source: Source,
    model: OnnxModel,
    request: BatchRequest,
    *,
    settings: Settings,
    workdir: Path,
    with_features: bool,
    progress: Callable[[int], None],
    cancelled: Callable[[], bool],
) -> RayTable:
    """Read, number, check and score the table on Ray; the scored blocks stay in the cluster.

    Raises what the local engine raises (BatchInputError naming column and row,
    ModelOutputInvalid, JobCancelled) and EngineUnavailable without Ray. `workdir` is unused:
    nothing is spilled to the driver's disk.
    """
    del workdir
    connect(settings)
    ray = _ray()
    columns = [request.id_column, *model.spec.raw_columns]
    if len(set(columns)) != len(columns):
        raise BatchInputError(f"id column {request.id_column!r} is also a model feature")
    chunk = settings.batch_chunk_rows
    files = {name: (model.path / name).read_bytes() for name in (GRAPH_FILE, CARD_FILE)}
    key = hashlib.sha256(b"".join(files[name] for name in sorted(files))).hexdigest()
    try:
        raw = _read(source, columns).materialize()
        pieces, n_read = _number(raw, chunk)
        del raw  # the pieces hold what they need
        if not pieces:
            raise BatchInputError(f"{source.files[0].name}: the customer table has no rows")
        scored = ray.data.from_arrow_refs(pieces).map_batches(
            _score,
            fn_args=(files, key, request.id_column, with_features),
            batch_size=chunk,
            batch_format="pyarrow",
        )
        spans: list[Span] = []
        rows = 0
        for bundle in _spans(scored):
            if cancelled():
                raise JobCancelled()
            spans += bundle
            rows += sum(s.rows for s in bundle)
            progress(rows)
        id_tables = ray.get([_remote(_ids_of).remote(s.ref, s.start, s.stop) for s in spans])
    except Exception as exc:
        _reraise(exc)
    if rows != n_read:  # Ray Data lost or repeated rows: never solve on that
        raise RuntimeError(f"Ray scored {rows} rows of the {n_read} it read")
    check_unique([t.column(ID).combine_chunks() for t in id_tables], request.id_column)
    return RayTable(spans, rows)


def _number(raw: Any, chunk: int) -> tuple[list[Any], int]:
    """Object refs of the raw rows cut into pieces of `chunk` rows with their global `_row`,
    and the number of rows."""
    pieces: list[Any] = []
    offset = 0
    for bundle in _spans(raw):
        for s in bundle:
            k = -(-s.rows // chunk)  # ceil
            if k == 0:
                continue
            refs = (
                _remote(_pieces)
                .options(num_returns=k)
                .remote(s.ref, s.start, s.stop, offset, chunk)
            )
            pieces += [refs] if k == 1 else list(refs)
            offset += s.rows
    return pieces, offset


def shutdown() -> None:
    """Stop this process's Ray connection (tests; a process exit does it anyway)."""
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()
