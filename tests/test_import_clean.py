"""Nothing happens at import: no files written, no settings read, no sockets opened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import pkgutil, importlib, socket, sys
opened = []
real = socket.socket.connect
socket.socket.connect = lambda self, *a: opened.append(a) or real(self, *a)
import turnout
for mod in pkgutil.walk_packages(turnout.__path__, "turnout."):
    if ".migrations" in mod.name or mod.name.endswith(".__main__"):
        continue
    importlib.import_module(mod.name)
assert not opened, opened
"""


def test_importing_every_module_has_no_side_effects(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=work,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(work.iterdir()) == []
    assert [p.name for p in home.iterdir() if not p.name.startswith(".")] == []


#: (modules imported in a fresh interpreter, module prefixes that must not come with them):
#: the house rules of the layout (DESIGN §2), so they cannot come back.
BOUNDARIES = {
    "the engine process loads no control plane": (
        ["turnout.engine.main", "turnout.engine.server"],
        ["turnout.store", "turnout.api", "turnout.rollout", "turnout.cli", "sqlalchemy", "alembic"],
    ),
    "rollout does not import the gateway": (
        ["turnout.rollout.controller", "turnout.rollout.runner", "turnout.routing.feed"],
        ["turnout.gateway"],
    ),
    "the gateway's request path never touches the store": (
        ["turnout.gateway.app", "turnout.gateway.proxy"],
        ["turnout.store", "sqlalchemy", "turnout.rollout", "turnout.api"],
    ),
    "the demo does not import the CLI": (
        ["turnout.demo.runner", "turnout.demo.models", "turnout.demo.server"],
        ["turnout.cli"],
    ),
    "placement knows nothing of the store": (
        ["turnout.placement.local", "turnout.placement.engines"],
        ["turnout.store", "turnout.api", "turnout.rollout", "sqlalchemy"],
    ),
}

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("rule", sorted(BOUNDARIES))
def test_layout_boundaries(rule: str) -> None:
    imported, forbidden = BOUNDARIES[rule]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *imported], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout)
    leaked = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert leaked == [], f"{rule}: importing {imported} loaded {leaked}"
