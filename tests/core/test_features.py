"""FeatureSpec: fitting, encoding, JSON round trip and the service's record path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.features import OTHER, FeatureError, FeatureSpec


def _columns() -> dict[str, np.ndarray]:
    return {
        "recency": np.array([1.0, 5.0, 12.0, 3.0]),
        "channel": np.array(["web", "phone", "web", "multichannel"], dtype=object),
        "newbie": np.array([0, 1, 1, 0]),
    }


def test_fit_detects_string_columns_and_orders_numeric_first() -> None:
    spec = FeatureSpec.fit(_columns())
    assert spec.numeric == ("recency", "newbie")
    assert spec.categorical == {"channel": ("multichannel", "phone", "web")}
    assert spec.encoded_names == [
        "recency", "newbie", "channel=multichannel", "channel=phone", "channel=web",
        f"channel={OTHER}",
    ]  # fmt: skip
    assert spec.n_features == 6
    assert spec.raw_columns == ["recency", "newbie", "channel"]


def test_encode_values_and_one_hot() -> None:
    spec = FeatureSpec.fit(_columns())
    x = spec.encode(_columns())
    assert x.dtype == np.float32 and x.shape == (4, 6)
    np.testing.assert_array_equal(x[:, 0], [1, 5, 12, 3])
    np.testing.assert_array_equal(x[:, 2:].sum(axis=1), np.ones(4))
    np.testing.assert_array_equal(x[0, 2:], [0, 0, 1, 0])  # web


def test_explicit_categorical_numbers_become_categories() -> None:
    spec = FeatureSpec.fit(_columns(), categorical=["channel", "newbie"])
    assert spec.categorical["newbie"] == ("0", "1")
    assert spec.encode_records([{"recency": 1, "channel": "web", "newbie": 1}])[0].tolist() == [
        1, 0, 0, 1, 0, 0, 1, 0,
    ]  # fmt: skip


def test_unknown_and_missing_category_go_to_other_slot() -> None:
    spec = FeatureSpec.fit(_columns())
    x = spec.encode_records(
        [
            {"recency": 2, "channel": "carrier-pigeon", "newbie": 0},
            {"recency": 2, "channel": None, "newbie": 0},
        ]
    )
    np.testing.assert_array_equal(x[:, 2:], [[0, 0, 0, 1], [0, 0, 0, 1]])


def test_json_round_trip_through_text() -> None:
    spec = FeatureSpec.fit(_columns())
    again = FeatureSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    np.testing.assert_array_equal(again.encode(_columns()), spec.encode(_columns()))


def test_from_json_rejects_malformed_documents() -> None:
    with pytest.raises(ValueError, match="malformed"):
        FeatureSpec.from_json({"numeric": ["a"]})
    with pytest.raises(ValueError, match="format_version"):
        FeatureSpec.from_json({"format_version": 99, "numeric": [], "categorical": []})


@pytest.mark.parametrize(
    ("bad_value", "message"),
    [("abc", "row 2 is not numeric"), (None, "row 2 is not numeric"),
     (float("nan"), "row 2 is not finite"), (float("inf"), "row 2 is not finite")],
)  # fmt: skip
def test_bad_numeric_value_names_column_and_row(bad_value: object, message: str) -> None:
    spec = FeatureSpec.fit(_columns())
    records = [{"recency": 1.0, "channel": "web", "newbie": 0} for _ in range(4)]
    records[2]["recency"] = bad_value
    with pytest.raises(FeatureError, match=f"'recency'.*{message}"):
        spec.encode_records(records)


def test_missing_column_and_missing_key_are_errors() -> None:
    spec = FeatureSpec.fit(_columns())
    with pytest.raises(FeatureError, match="missing feature column 'newbie'"):
        spec.encode({"recency": [1.0], "channel": ["web"]})
    with pytest.raises(FeatureError, match="'channel': row 1 has no value"):
        spec.encode_records(
            [{"recency": 1, "channel": "web", "newbie": 0}, {"recency": 1, "newbie": 0}]
        )


def test_max_categories_keeps_most_frequent() -> None:
    cols = {"city": np.array(["a"] * 5 + ["b"] * 3 + ["c"], dtype=object)}
    spec = FeatureSpec.fit(cols, max_categories=2)
    assert spec.categorical == {"city": ("a", "b")}
    np.testing.assert_array_equal(spec.encode(cols)[-1], [0, 0, 1])


rows = st.lists(
    st.fixed_dictionaries(
        {
            "x": st.floats(-1e6, 1e6, allow_nan=False),
            "k": st.integers(-1000, 1000),
            "c": st.sampled_from(["a", "b", "c", "zz", "ü"]),
        }
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=50, deadline=None)
@given(train=rows, serve=rows)
def test_encode_equals_encode_records(train: list[dict], serve: list[dict]) -> None:
    columns = {k: np.array([r[k] for r in train], dtype=object if k == "c" else None)
               for k in ("x", "k", "c")}  # fmt: skip
    spec = FeatureSpec.fit(columns)
    serve_cols = {k: np.array([r[k] for r in serve], dtype=object if k == "c" else None)
                  for k in ("x", "k", "c")}  # fmt: skip
    a = spec.encode(serve_cols)
    b = spec.encode_records(serve)
    np.testing.assert_array_equal(a, b)
    one_hot = a[:, 2:]
    np.testing.assert_array_equal(one_hot.sum(axis=1), np.ones(len(serve)))
    unseen = ~np.isin([r["c"] for r in serve], spec.categorical["c"])
    np.testing.assert_array_equal(one_hot[:, -1] == 1, unseen)
