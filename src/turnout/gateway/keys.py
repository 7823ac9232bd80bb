"""Inference keys: how the gateway maps a Bearer token to an org, and to the operator's limits.

The hash is :func:`turnout.ids.hash_key`, shared with the store; this module pulls in neither
aiohttp nor the web stack. Tokens are never kept in memory in clear text: the table is
keyed by the sha256 hex digest the store also persists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from turnout.ids import hash_key
from turnout.routing.table import KeyEntry

__all__ = ["InferenceKeys", "KeyEntry", "StaticInferenceKeys", "hash_key"]


class InferenceKeys(Protocol):
    def lookup(self, token: str) -> KeyEntry | None:
        """The key's entry, or None; an in-memory lookup with no I/O."""
        ...


class StaticInferenceKeys:
    """An in-memory key table (``hash_key(token) -> entry``) that the store layer refills.

    A plain org name stands for a key without limits (its id: the start of its hash).
    """

    __slots__ = ("_entries",)

    def __init__(self, mapping: Mapping[str, str | KeyEntry] | None = None) -> None:
        self._entries: dict[str, KeyEntry] = _entries(mapping or {})

    def replace(self, mapping: Mapping[str, str | KeyEntry]) -> None:
        # One reference assignment: a request running concurrently sees the old or the new
        # table, never a half-filled one.
        self._entries = _entries(mapping)

    def lookup(self, token: str) -> KeyEntry | None:
        return self._entries.get(hash_key(token))

    def org_for_key(self, token: str) -> str | None:
        entry = self.lookup(token)
        return entry.org if entry else None


def _entries(mapping: Mapping[str, str | KeyEntry]) -> dict[str, KeyEntry]:
    return {
        key_hash: KeyEntry(value, key_hash[:16]) if isinstance(value, str) else value
        for key_hash, value in mapping.items()
    }
