"""Identifiers: how ids, keys and resource names are made, hashed and parsed."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Final

from turnout.errors import BadRequest

#: DESIGN §4 / reference §1.5. Test with :func:`full_match`: ``re.match`` lets ``$`` match
#: before a trailing newline, so ``"prod\n"`` would pass.
ALIAS_PATTERN: Final = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]$")
FINGERPRINT_SUFFIX_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Orgs, endpoints and architectures: lowercase, digits, dot, dash; starts with a letter.
NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9.-]{0,126}[a-z0-9]$")

#: Deployment ids are UUIDs (:func:`new_deployment_id`).
DEPLOYMENT_ID_PATTERN: Final = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)
#: Key ids (:func:`new_key_id`).
KEY_ID_PATTERN: Final = re.compile(r"^key_[0-9a-f]{16}$")

_VERSION_NAME = re.compile(r"^orgs/([^/]+)/models/([^/]+)/versions/([^/]+)$")

KEY_PREFIXES: Final = {"management": "tmk_", "inference": "tik_"}

#: Version numbers are stored as 32-bit integers; a larger number names no version.
MAX_VERSION_NUMBER: Final = 2**31 - 1


def full_match(pattern: re.Pattern[str], value: str) -> bool:
    """The whole of ``value`` matches (no trailing newline slips past ``$``)."""
    return pattern.fullmatch(value) is not None


def version_number(ref: str) -> int | None:
    """The integer a ``version_id`` path segment names, or None when it is an alias.

    Only ASCII digits count: ``str.isdigit`` also accepts ``"²"``, which ``int()`` refuses.
    """
    if ref.isascii() and ref.isdigit():
        return int(ref)
    return None


def hash_key(token: str) -> str:
    """How every API key is stored and looked up (sha256 hex; keys are 256-bit random)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_key(kind: str) -> str:
    return KEY_PREFIXES[kind] + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def new_deployment_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class VersionRef:
    """``orgs/<org>/models/<arch>/versions/<id or alias>``."""

    org_name: str
    arch_id: str
    version: str

    @classmethod
    def parse(cls, name: str, *, param: str = "model") -> VersionRef:
        match = _VERSION_NAME.fullmatch(name)
        if not match:
            raise BadRequest(
                f"{param} {name!r} is not a model version name; use "
                "orgs/<org_name>/models/<model_arch_id>/versions/<version_id or alias>",
                param=param,
                code="invalid_model_name",
            )
        return cls(*match.groups())

    def __str__(self) -> str:
        return f"orgs/{self.org_name}/models/{self.arch_id}/versions/{self.version}"
