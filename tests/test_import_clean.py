"""Nothing happens at import: no files written, no settings read, no sockets opened."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import pkgutil, importlib, socket, sys
opened = []
real = socket.socket.connect
socket.socket.connect = lambda self, *a: opened.append(a) or real(self, *a)
import turnout
for mod in pkgutil.walk_packages(turnout.__path__, "turnout."):
    if ".migrations" in mod.name:
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
