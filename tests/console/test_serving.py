"""`turnout serve` serves the console at /console in the roles that run the management API
(`all` and `api`), from the files installed with the package."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.console.harness import TurnoutServer


@pytest.mark.parametrize("role", ["all", "api"])
def test_console_is_served_with_its_assets(tmp_path: Path, role: str) -> None:
    server = TurnoutServer(tmp_path / "data", env={}, role=role).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            bare = http.get("/console")
            assert bare.status_code == 308
            index = http.get("/console", follow_redirects=True)
            assert str(index.url) == server.url + "/console/"
            assert index.status_code == 200
            assert index.headers["content-type"].startswith("text/html")
            assert '<div id="app">' in index.text
            refs = re.findall(r'(?:src|href)="\./(assets/[^"]+)"', index.text)
            kinds = {}
            for ref in refs:
                asset = http.get(f"/console/{ref}")
                assert asset.status_code == 200, ref
                kinds[ref.rsplit(".", 1)[1]] = asset.headers["content-type"]
            assert "javascript" in kinds["js"] and kinds["css"].startswith("text/css")
            missing = http.get("/console/assets/nope.js")
            assert missing.status_code == 404 and missing.json()["code"] == "not_found"
            paths = http.get("/openapi.json").json()["paths"]
            assert not [p for p in paths if p.startswith("/console")]
            assert http.get("/management/v1/orgs/x/endpoints").status_code == 401
    finally:
        server.stop()
