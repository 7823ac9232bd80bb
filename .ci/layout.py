"""Structure checks from STYLE.md that ruff and mypy do not cover.

- no module over 600 lines; no grab-bag module names (utils, common, helpers, misc);
- wire schemas import no sqlalchemy, torch, aiohttp, boto3 or fastapi;
- only placement/ starts processes; nothing pickles.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "turnout"
HEAVY = re.compile(r"^\s*(from|import)\s+(sqlalchemy|torch|aiohttp|boto3|fastapi)\b", re.M)
SUBPROCESS = re.compile(r"^\s*(from|import)\s+subprocess\b|create_subprocess_exec", re.M)


def problems() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        text = path.read_text()
        if "migrations" in rel.parts:
            continue
        if text.count("\n") > 600:
            found.append(f"{rel}: {text.count(chr(10))} lines (hard cap 600)")
        if path.stem in {"utils", "common", "helpers", "misc"}:
            found.append(f"{rel}: name a module for what it holds")
        if ("schemas" in rel.parts or path.stem == "schemas") and HEAVY.search(text):
            found.append(f"{rel}: schema modules import no heavy libraries")
        if SUBPROCESS.search(text) and rel.parts[0] not in ("placement", "cli", "demo"):
            found.append(f"{rel}: only placement/ (and the CLI and demo) start processes")
        if re.search(r"^\s*import (cloud)?pickle\b", text, re.M):
            found.append(f"{rel}: nothing is pickled")
    return found


if __name__ == "__main__":
    issues = problems()
    for line in issues:
        print(line)  # noqa: T201
    sys.exit(1 if issues else 0)
