"""Structure checks from STYLE.md that ruff and mypy do not cover.

- no module over 600 lines; no grab-bag module names (utils, common, helpers, misc);
- wire schemas import no sqlalchemy, torch, aiohttp, boto3 or fastapi;
- only placement/ starts processes; only placement/ray.py imports ray; nothing pickles;
- no import cycles between turnout's modules or packages.
"""

from __future__ import annotations

import ast
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
        if re.search(r"^\s*(from|import)\s+ray\b", text, re.M) and rel != Path("placement/ray.py"):
            found.append(f"{rel}: only placement/ray.py imports ray")
    return found + cycles()


def _imports() -> dict[str, set[str]]:
    """Module -> the turnout modules it imports (TYPE_CHECKING imports included)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
                    break
    return graph


def cycles() -> list[str]:
    """Modules that import each other, directly or round a loop, and packages that do."""
    graph = _imports()
    found = []
    for name in sorted(graph):
        seen, todo = set(), list(graph[name])
        while todo:
            current = todo.pop()
            if current == name:
                found.append(f"{name}: imports itself through others (an import cycle)")
                break
            if current not in seen:
                seen.add(current)
                todo.extend(graph[current])
    package = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    edges = {(package(a), package(b)) for a, bs in graph.items() for b in bs}
    for a, b in sorted(edges):
        if a < b and (b, a) in edges:
            found.append(f"{a} and {b} import each other")
    return found


if __name__ == "__main__":
    issues = problems()
    for line in issues:
        print(line)  # noqa: T201
    sys.exit(1 if issues else 0)
