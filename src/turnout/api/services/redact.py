"""What a tenant may read of an error the server recorded.

Deployment and sync errors are stored as the worker wrote them, for the operator: engine log
lines, server paths, replica addresses. A tenant sees only the first line, with server paths
and internal URLs replaced; the operator reads the whole text with
``turnout admin deployment show`` (and in the server log).
"""

from __future__ import annotations

import re
from typing import Final

#: An absolute filesystem path (not the path part of a URL).
_PATH: Final = re.compile(r"(?<![\w.:/\\])/(?:[^\s/'\"(),;:]+/)*[^\s/'\"(),;:]*")
_URL: Final = re.compile(r"\bhttps?://[^\s'\"]+")
#: How the local placement introduces the engine's log tail ("... Last lines of PATH:").
_LOG_TAIL: Final = re.compile(r"[.;,]?\s*Last lines of \S+:?\s*$")
OPERATOR_HINT: Final = "an operator sees the details with `turnout admin deployment show`"


def tenant_text(text: str, *, keep: tuple[str, ...] = (), internal_urls: bool = False) -> str:
    """``text`` without engine log lines or server paths (and without URLs when
    ``internal_urls``: replica addresses). ``keep``: strings the tenant gave (its own weight
    URI), left as they are."""
    first, _, rest = text.partition("\n")
    cut = bool(rest.strip())
    if _LOG_TAIL.search(first):
        first, cut = _LOG_TAIL.sub("", first), True
    held = {f"\x00{i}\x00": k for i, k in enumerate(keep) if k}
    for marker, kept in held.items():
        first = first.replace(kept, marker)
    if internal_urls:
        first = _URL.sub("<replica>", first)
    first = _PATH.sub("<server path>", first)
    for marker, kept in held.items():
        first = first.replace(marker, kept)
    if cut:
        first = f"{first.rstrip(' .:;')} ({OPERATOR_HINT})"
    return first
