"""Outcomes: upsert per customer; unknown ids and NaN/inf refused, nothing written; bulk import."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import make_engine
from app.services import outcomes
from tests.utils.api import explored_allocation


def _stored(client: TestClient, allocation_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/allocations/{allocation_id}/outcomes")
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_record_upsert_and_read_back(client: TestClient, customers: Any) -> None:
    alloc = explored_allocation(client, customers)
    url = f"/v1/allocations/{alloc['id']}/outcomes"
    first = [{"customer_id": f"c{i}", "revenue": 10.0 + i, "cost": 1.0} for i in range(5)]
    r = client.post(url, json={"outcomes": first})
    assert r.status_code == 200, r.text
    assert r.json()["n_written"] == 5 and r.json()["n_outcomes"] == 5
    # A later report replaces the earlier one for the same customer; new customers are added.
    second = [{"customer_id": "c2", "revenue": 99.5, "cost": 2.5},
              {"customer_id": "c7", "revenue": 0.0, "cost": 0.0}]  # fmt: skip
    assert client.post(url, json={"outcomes": second}).json()["n_outcomes"] == 6
    items = _stored(client, alloc["id"])
    assert [i["customer_id"] for i in items] == ["c0", "c1", "c2", "c3", "c4", "c7"]
    by_id = {i["customer_id"]: i for i in items}
    assert (by_id["c2"]["revenue"], by_id["c2"]["cost"]) == (99.5, 2.5)
    decisions = {d["customer_id"]: d for d in alloc["decisions"]}
    for i in items:  # each outcome shows the decision it belongs to
        d = decisions[i["customer_id"]]
        assert (i["treatment"], i["explored"], i["propensity"]) == (
            d["treatment"], d["explored"], d["propensity"],
        )  # fmt: skip
    page = client.get(f"{url}?limit=4&offset=0").json()
    assert len(page["items"]) == 4 and page["next_offset"] == 4 and page["n_outcomes"] == 6
    last = client.get(f"{url}?limit=4&offset=4").json()
    assert [i["customer_id"] for i in last["items"]] == ["c4", "c7"] and last["next_offset"] is None


def test_unknown_ids_nan_and_repeats_write_nothing(client: TestClient, customers: Any) -> None:
    alloc = explored_allocation(client, customers, 10)
    url = f"/v1/allocations/{alloc['id']}/outcomes"
    good = [{"customer_id": "c1", "revenue": 5.0, "cost": 1.0}]
    r = client.post(url, json={"outcomes": good + [
        {"customer_id": "nobody", "revenue": 1.0, "cost": 0.0},
        {"customer_id": "c99", "revenue": 1.0, "cost": 0.0},
    ]})  # fmt: skip
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["unknown_customer_ids"] == ["nobody", "c99"] and "'nobody'" in body["detail"]
    assert _stored(client, alloc["id"]) == []
    # NaN / inf are refused by field (JSON allows them as literals in Python's parser).
    for bad in ("NaN", "Infinity", "-Infinity"):
        raw = '{"outcomes": [{"customer_id": "c1", "revenue": ' + bad + ', "cost": 1.0}]}'
        r = client.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "revenue" in r.json()["detail"], r.text
    r = client.post(url, json={"outcomes": good + good})
    assert r.status_code == 422 and "repeated" in r.json()["detail"]
    assert _stored(client, alloc["id"]) == []
    missing = f"/v1/allocations/{uuid.uuid4()}/outcomes"
    assert client.post(missing, json={"outcomes": good}).status_code == 404
    assert client.get(missing).status_code == 404


def test_bulk_import_uses_the_same_checks(
    client: TestClient, customers: Any, settings: Settings, tmp_path: Path
) -> None:
    alloc = explored_allocation(client, customers, 40)
    allocation_id = uuid.UUID(alloc["id"])
    frame = pd.DataFrame({"customer_id": [f"c{i}" for i in range(40)],
                          "revenue": [float(i) for i in range(40)], "cost": 0.5})  # fmt: skip
    path = tmp_path / "outcomes.parquet"
    frame.to_parquet(path, index=False)
    bad_csv = tmp_path / "bad.csv"
    frame.assign(cost=["x"] + [0.5] * 39).to_csv(bad_csv, index=False)
    with pytest.raises(ValueError, match=r"bad.csv: column 'cost'.*row 0 \(customer 'c0'\)"):
        outcomes.read_file(bad_csv)
    with pytest.raises(ValueError, match="missing column 'revenue'"):
        frame.drop(columns="revenue").to_csv(bad_csv, index=False)
        outcomes.read_file(bad_csv)
    engine = make_engine(settings)
    with Session(engine) as session, session.begin():
        written = outcomes.record(session, allocation_id, *outcomes.read_file(path))
    engine.dispose()
    assert written.n_outcomes == 40
    assert client.get(f"/v1/allocations/{alloc['id']}/outcomes").json()["n_outcomes"] == 40
