"""Inference keys: how the gateway maps a Bearer token to an org.

The hash is :func:`turnout.ids.hash_key`, shared with the store; this module pulls in neither
aiohttp nor the web stack. Tokens are never kept in memory in clear text: the table is
keyed by the sha256 hex digest the store also persists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from turnout.ids import hash_key

__all__ = ["InferenceKeys", "StaticInferenceKeys", "hash_key"]


class InferenceKeys(Protocol):
    def org_for_key(self, token: str) -> str | None:
        """The org an inference key belongs to, or None; an in-memory lookup with no I/O."""
        ...


class StaticInferenceKeys:
    """An in-memory key table (``hash_key(token) -> org_name``) that the store layer refills."""

    __slots__ = ("_orgs",)

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        self._orgs: dict[str, str] = dict(mapping or {})

    def replace(self, mapping: Mapping[str, str]) -> None:
        # One reference assignment: a request running concurrently sees the old or the new
        # table, never a half-filled one.
        self._orgs = dict(mapping)

    def org_for_key(self, token: str) -> str | None:
        return self._orgs.get(hash_key(token))
