"""Schemathesis against the service's own OpenAPI schema: no 5xx, every response as documented.

Each operation gets schema-valid (positive) and schema-violating (negative) requests with an
admin key, on both databases, through the in-process TestClient (lifespan run, tiny model active).
Bounded: FUZZ_EXAMPLES per operation and mode (env DFCL_FUZZ_EXAMPLES to go deeper).
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import given as hypothesis_given
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import ignored_auth, negative_data_rejection, positive_data_acceptance

FUZZ_EXAMPLES = int(os.environ.get("DFCL_FUZZ_EXAMPLES", "40"))
# Not fuzzed: it launches a real training subprocess per accepted request.
SKIPPED = {"POST /v1/retrain"}
# Schema-valid bodies may still be refused on purpose: feature names come from the active model
# (not the static schema) and a budget may be infeasible; both are documented 4xx answers.
# Every request carries a real admin key in place of generated credentials (ignored_auth would
# call that "invalid auth accepted"); refusals of bad keys are tested in test_auth.py.
# pydantic parses some values outside the declared type on purpose (a Unix timestamp where the
# schema says date-time): negative cases must still never give a 5xx or an undocumented answer.
EXCLUDED_CHECKS = [positive_data_acceptance, ignored_auth, negative_data_rejection]


def test_openapi_fuzz_no_server_errors_and_schema_conformance(client: TestClient) -> None:
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    auth = {"Authorization": client.headers["Authorization"]}
    failures: dict[str, str] = {}
    calls = {"n": 0, "5xx": 0}

    def check(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=auth)
        kwargs.pop("cookies", None)
        if isinstance(kwargs.get("data"), bytes | str):  # requests-style raw body -> httpx
            kwargs["content"] = kwargs.pop("data")
        response = client.request(**kwargs)
        calls["n"] += 1
        calls["5xx"] += response.status_code >= 500
        case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:
        if operation.label in SKIPPED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            run = settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )(hypothesis_given(case=strategy)(check))
            try:
                run()
            except Unsatisfiable:
                continue  # nothing to break, e.g. no parameters at all (GET /healthz)
            except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures[f"{operation.label} ({mode.value})"] = str(exc)[:1500]
    print(f"\nfuzzed {len(operations)} operations, {calls['n']} requests, {calls['5xx']} 5xx")
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert calls["5xx"] == 0
