"""One thin APIRouter per resource."""

from __future__ import annotations

from fastapi.routing import APIRoute


def operation_id(route: APIRoute) -> str:
    """OpenAPI operation id: the endpoint function's snake_case name (`create_allocation`).

    Stable and short, so generated clients get readable method names. Endpoints whose function
    name alone would be ambiguous set `operation_id=` on their decorator instead; the test in
    tests/api/test_openapi_client.py checks they are unique.
    """
    return route.name
