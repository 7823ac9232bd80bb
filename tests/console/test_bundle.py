"""The console's built files, committed under src/turnout/console/, match their sources in
console/, reference only files that exist, stay small, and are all shipped as package data."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "console"
BUILT = ROOT / "src" / "turnout" / "console"
# Must stay the same list, hashed the same way, as SOURCES in console/vite.config.js.
SOURCES = ["index.html", "package.json", "package-lock.json", "vite.config.js", "src"]
MAX_BYTES = 1_000_000


def source_digest() -> str:
    files: list[str] = []
    for entry in SOURCES:
        path = SOURCE / entry
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files += [p.relative_to(SOURCE).as_posix() for p in found]
    whole = hashlib.sha256()
    for name in sorted(files):
        own = hashlib.sha256((SOURCE / name).read_bytes()).hexdigest()
        whole.update(f"{name}\n{own}\n".encode())
    return whole.hexdigest()


def built_files() -> list[Path]:
    return sorted(p for p in BUILT.rglob("*") if p.is_file())


def test_committed_build_matches_the_sources() -> None:
    info = json.loads((BUILT / "build-info.json").read_text())
    assert info["source_sha256"] == source_digest(), (
        "console/ changed since src/turnout/console/ was built: run `make console` and commit"
    )


def test_index_references_only_bundled_files_that_exist() -> None:
    index = (BUILT / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', index)
    local = [r for r in refs if not r.startswith("data:")]
    assert any(r.endswith(".js") for r in local) and any(r.endswith(".css") for r in local)
    for ref in local:
        assert ref.startswith("./assets/"), f"{ref}: everything is bundled, nothing from a CDN"
        assert (BUILT / ref).is_file(), f"index.html references missing {ref}"
    shipped = {p.relative_to(BUILT).as_posix() for p in built_files()}
    assert shipped == {"index.html", "build-info.json"} | {r[2:] for r in local}, (
        "stale or unreferenced files in the build"
    )


def test_assets_stay_under_one_megabyte() -> None:
    total = sum(p.stat().st_size for p in built_files())
    assert 0 < total < MAX_BYTES, f"console build is {total} bytes"


def test_every_built_file_is_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["turnout"]
    for path in built_files():
        rel = path.relative_to(BUILT.parent).as_posix()
        assert any(fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns), rel
