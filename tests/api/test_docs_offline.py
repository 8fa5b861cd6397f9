"""/docs and /redoc work on an offline host: their pages load only assets the service serves."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_only_local_assets(bare_client: TestClient, page: str) -> None:
    r = bare_client.get(page, headers={"Authorization": ""})
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    html = r.text
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", html)
    urls += re.findall(r"""spec-url=["']([^"']+)["']""", html)
    assert urls, html
    assert not re.search(r"https?://", html), "the page names an external URL"
    for url in urls:
        assert url.startswith("/"), url
        got = bare_client.get(url, headers={"Authorization": ""})
        assert got.status_code == 200 and got.content, url
    assert "/openapi.json" in urls
    assert any(u.endswith(".js") for u in urls)
