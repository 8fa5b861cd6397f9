"""`dfcl demo` end to end on tiny sizes: data, training, registry, and a curl that works."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import app as cli
from app.config import Settings
from app.main import create_app

TINY_TRAINING = {
    "epochs": 2,
    "prediction_epochs": 2,
    "teacher_epochs": 1,
    "steps_per_epoch": 8,
    "batch_size": 128,
    "hidden": [16, 8],
}


def test_demo_trains_registers_and_prints_a_working_curl(tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_TRAINING))
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    env = {"DFCL_DATABASE_URL": settings.database_url, "DFCL_MODELS_DIR": str(settings.models_dir)}
    args = ["demo", "--workdir", str(tmp_path / "demo"), "--config", str(config), "--no-serve"]
    args += ["--n-obs", "1500", "--n-rct", "600", "--n-test", "200"]
    r = CliRunner().invoke(cli, args, env=env)
    assert r.exit_code == 0, r.output
    assert "training bi-dfcl" in r.output and "is active" in r.output

    curl = r.output[r.output.index("curl -s") :]
    words = shlex.split(curl.replace("\\\n", " "))
    body = json.loads(words[words.index("-d") + 1])
    assert words[4].endswith("/v1/allocations") and len(body["customers"]) == 3
    header = words[words.index("-H", 6) + 1]  # the curl carries the API key the demo created
    assert header.startswith("authorization: Bearer dfcl_")
    auth = dict([header.split(": ", 1)])
    with TestClient(create_app(settings), headers=auth) as client:
        active = client.get("/v1/models/active").json()
        assert active["version"] in r.output and active["method"] == "bi-dfcl"
        out = client.post("/v1/allocations", json=body)
        assert out.status_code == 201, out.text
        assert out.json()["expected_cost"] <= body["budget"] + 1e-9
