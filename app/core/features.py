"""Feature encoding shared by training and the service: raw columns -> float32 matrix.

Numeric columns pass through unchanged (normalisation lives inside the ONNX graph); each
categorical column becomes a one-hot block over its known categories plus one "<other>" slot,
so a category never seen in training is encoded, not rejected. Categories are compared as
strings. numpy + stdlib only, so the service applies exactly the encoding training used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

OTHER = "<other>"
FORMAT_VERSION = 1
# The accepted range of a numeric feature: |x| <= MAX_ABS. Far inside float32 (the model's input
# type, max 3.4e38): a network's normalisation and layers overflow long before that. The API
# (app/schemas.py) and the batch job (app/jobs/allocate.py) check the same bound.
MAX_ABS = 1e9
_MISSING = object()

Columns = Mapping[str, Sequence[Any] | npt.NDArray[Any]]


class FeatureError(ValueError):
    """Input rows cannot be encoded; the message names the column and the first bad row."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating | np.bool_)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


_IS_NUMBER = np.frompyfunc(_is_number, 1, 1)
_IS_MISSING = np.frompyfunc(_is_missing, 1, 1)
_IS_ABSENT = np.frompyfunc(lambda v: v is _MISSING, 1, 1)


def _column(columns: Columns, name: str) -> npt.NDArray[Any]:
    """Fetch one column as a 1-D array, naming it when absent."""
    try:
        values = columns[name]
    except KeyError:
        raise FeatureError(f"missing feature column {name!r}") from None
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise FeatureError(f"feature column {name!r} must be 1-D, got shape {arr.shape}")
    return arr


def _as_float64(name: str, arr: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """astype(float64), with an integer too large for a float named by its row."""
    try:
        return arr.astype(np.float64)
    except OverflowError:
        for row, value in enumerate(arr.tolist()):
            try:
                float(value)
            except OverflowError:
                raise FeatureError(
                    f"feature column {name!r}: row {row} is out of range "
                    f"(an integer of {len(str(value))} digits)"
                ) from None
        raise


def _numeric(name: str, arr: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Column -> float64 (N,); strings, None, NaN, inf and |x| > MAX_ABS are errors naming the
    first bad row."""
    if arr.dtype.kind in "biuf":
        out = _as_float64(name, arr)
    else:
        if arr.dtype.kind == "O":
            ok = _IS_NUMBER(arr).astype(bool) if arr.size else np.ones(0, dtype=bool)
        else:  # str / bytes / datetime: never numeric
            ok = np.zeros(arr.shape, dtype=bool)
        if not ok.all():
            row = int(np.argmin(ok))
            raise FeatureError(f"feature column {name!r}: row {row} is not numeric ({arr[row]!r})")
        out = _as_float64(name, arr)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.argmax(bad))
        raise FeatureError(f"feature column {name!r}: row {row} is not finite ({out[row]!r})")
    big = np.abs(out) > MAX_ABS
    if big.any():
        row = int(np.argmax(big))
        raise FeatureError(
            f"feature column {name!r}: row {row} is out of range ({out[row]:.3g}; "
            f"features must satisfy |x| <= {MAX_ABS:g})"
        )
    return out


def _as_strings(arr: npt.NDArray[Any]) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.bool_]]:
    """Category values as strings (N,) and a missing mask (N,) for None/NaN."""
    if arr.dtype.kind == "O" and arr.size:
        missing = _IS_MISSING(arr).astype(bool)
    elif arr.dtype.kind == "f":
        missing = np.isnan(arr)
    else:
        missing = np.zeros(arr.shape, dtype=bool)
    return arr.astype(str), missing


@dataclass(frozen=True)
class FeatureSpec:
    """Which raw columns feed the model and how: numeric in order, then one-hot categoricals."""

    numeric: tuple[str, ...]
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = list(self.numeric) + list(self.categorical)
        if len(set(names)) != len(names):
            raise ValueError(f"feature names repeat: {names}")
        for col, cats in self.categorical.items():
            if len(set(cats)) != len(cats) or OTHER in cats:
                raise ValueError(f"categories of {col!r} repeat or contain {OTHER!r}: {cats}")

    @classmethod
    def fit(
        cls,
        columns: Columns,
        categorical: Iterable[str] | None = None,
        *,
        max_categories: int = 64,
    ) -> FeatureSpec:
        """Learn the spec from training columns; categorical=None means string/object columns.

        Each categorical keeps its `max_categories` most frequent values (ties by name) so an
        id-like column cannot blow up the input width; the rest share the "<other>" slot.
        """
        names = [str(n) for n in columns.keys()]
        arrays = {n: _column(columns, n) for n in names}
        if categorical is None:
            cat_names = [n for n in names if arrays[n].dtype.kind in "OUS"]
        else:
            cat_names = list(categorical)
            unknown = [n for n in cat_names if n not in arrays]
            if unknown:
                raise FeatureError(f"categorical columns {unknown} are not among {names}")
        numeric = tuple(n for n in names if n not in cat_names)
        for n in numeric:
            _numeric(n, arrays[n])  # fail early on a non-numeric numeric column
        cats: dict[str, tuple[str, ...]] = {}
        for n in cat_names:
            values, missing = _as_strings(arrays[n])
            values = values[~missing & (values != OTHER)]
            uniq, counts = np.unique(values, return_counts=True)
            order = np.lexsort((uniq, -counts))[:max_categories]  # most frequent, then by name
            cats[n] = tuple(sorted(str(u) for u in uniq[order]))
        return cls(numeric=numeric, categorical=cats)

    @property
    def raw_columns(self) -> list[str]:
        """Columns a caller must supply."""
        return list(self.numeric) + list(self.categorical)

    @property
    def encoded_names(self) -> list[str]:
        """Name of each encoded feature, in column order of `encode`'s output."""
        names = list(self.numeric)
        for col, cats in self.categorical.items():
            names += [f"{col}={c}" for c in cats] + [f"{col}={OTHER}"]
        return names

    @property
    def n_features(self) -> int:
        """Width F of the encoded matrix."""
        return len(self.numeric) + sum(len(c) + 1 for c in self.categorical.values())

    def encode(self, columns: Columns) -> npt.NDArray[np.float32]:
        """Raw columns -> float32 (N, F); unknown or missing categories go to "<other>"."""
        raw = {n: _column(columns, n) for n in self.raw_columns}
        lengths = {n: len(a) for n, a in raw.items()}
        if len(set(lengths.values())) > 1:
            raise FeatureError(f"feature columns differ in length: {lengths}")
        n_rows = next(iter(lengths.values()), 0)
        out = np.zeros((n_rows, self.n_features), dtype=np.float32)
        for i, name in enumerate(self.numeric):
            out[:, i] = _numeric(name, raw[name])
        offset = len(self.numeric)
        rows = np.arange(n_rows)
        for name, cats in self.categorical.items():
            values, missing = _as_strings(raw[name])
            known = np.asarray(cats, dtype=str)
            if known.size:
                pos = np.searchsorted(known, values)  # cats are sorted by construction
                hit = (pos < known.size) & (known[np.minimum(pos, known.size - 1)] == values)
                code = np.where(hit & ~missing, pos, known.size)
            else:
                code = np.zeros(n_rows, dtype=np.int64)
            out[rows, offset + code] = 1.0
            offset += known.size + 1
        return out

    def encode_records(self, records: Sequence[Mapping[str, object]]) -> npt.NDArray[np.float32]:
        """JSON-style rows -> float32 (N, F), identical to `encode` on the same data."""
        columns: dict[str, npt.NDArray[Any]] = {}
        for name in self.raw_columns:
            values = np.empty(len(records), dtype=object)
            values[:] = [r.get(name, _MISSING) for r in records]
            absent = _IS_ABSENT(values).astype(bool) if len(records) else np.zeros(0, bool)
            if absent.any():
                row = int(np.argmax(absent))
                raise FeatureError(f"feature column {name!r}: row {row} has no value")
            columns[name] = values
        if not self.raw_columns:
            return np.zeros((len(records), 0), dtype=np.float32)
        return self.encode(columns)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe description, stored in model.json (lists keep the column order)."""
        return {
            "format_version": FORMAT_VERSION,
            "numeric": list(self.numeric),
            "categorical": [
                {"name": col, "categories": list(cats)} for col, cats in self.categorical.items()
            ],
            "other": OTHER,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of `to_json`; a malformed document raises ValueError saying what is wrong."""
        try:
            numeric = tuple(str(n) for n in d["numeric"])
            categorical = {
                str(c["name"]): tuple(sorted(str(v) for v in c["categories"]))
                for c in d["categorical"]
            }
        except (KeyError, TypeError) as exc:
            raise ValueError(f"feature spec JSON is malformed: {exc!r}") from None
        if d.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"feature spec format_version {d['format_version']} is not supported")
        return cls(numeric=numeric, categorical=categorical)
