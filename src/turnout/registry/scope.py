"""Which weight sources one org may sync from, and the sync settings it syncs with.

The server reads with its own credentials and filesystem, so without a rule any tenant could
make it copy what another tenant (or the operator) keeps there. A weight URI is allowed when
the operator allowed it, either for every org (server settings) or for this org (its grants,
``turnout admin org s3-allow | file-allow | hf-allow``):

======  =================================================  =====================================
scheme  every org                                          one org (grant prefix, credentials)
======  =================================================  =====================================
file    TURNOUT_ALLOWED_LOCAL_ROOTS                        a directory
s3      TURNOUT_ALLOWED_S3_PREFIXES                        ``bucket/prefix/``, an AWS profile
hf      TURNOUT_ALLOWED_HF_REPOS (public, no token)        ``ns/`` or ``ns/repo``, a token's env
https   TURNOUT_ALLOWED_HOSTS for private hosts; any       (no per-org rule: public hosts need no
        public host                                         credentials of the server)
======  =================================================  =====================================

A refusal is 403 :class:`~turnout.errors.SourceNotAllowed` naming the rule. It is decided from
the URI alone, before the source is touched, so it never tells whether a bucket, prefix, repo
or directory exists; and it never lists what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from turnout.errors import BadRequest, SourceNotAllowed
from turnout.registry.config import SyncConfig

SCHEMES = ("s3", "file", "hf")


@dataclass(frozen=True, slots=True)
class Grant:
    """One source an org may use: ``scheme`` s3 | file | hf, its normalized ``prefix``
    (:func:`grant_key`), and the name of its credentials (an AWS profile; for hf, the server
    environment variable holding the token)."""

    scheme: str
    prefix: str
    credentials: str | None = None


def _s3_key(uri: str) -> str:
    parts = urlsplit(uri)
    segments = [s for s in parts.path.split("/") if s]
    if not parts.netloc or any(s in (".", "..") for s in segments) or "//" in parts.path[1:]:
        raise BadRequest(f"{uri}: expected s3://bucket/prefix", param="model.weight_uri")
    return "/".join([parts.netloc, *segments]) + "/"


def _hf_key(uri: str) -> str:
    repo = uri.removeprefix("hf://").partition("@")[0].strip("/")
    if not repo or ".." in repo or repo.count("/") > 1:
        raise BadRequest(f"{uri}: expected hf://namespace or hf://namespace/repo")
    return repo if "/" in repo else repo + "/"


def grant_key(uri: str) -> tuple[str, str]:
    """An operator's ``s3://bucket[/prefix]``, ``/abs/dir`` (or ``file://``) or
    ``hf://namespace[/repo]`` as the (scheme, prefix) a grant is stored under."""
    scheme = uri.partition("://")[0].lower() if "://" in uri else "file"
    if scheme == "s3":
        return "s3", _s3_key(uri)
    if scheme == "hf":
        return "hf", _hf_key(uri)
    if scheme == "file":
        path = unquote(urlsplit(uri).path) if uri.startswith("file:") else uri
        if not path.startswith("/"):
            raise BadRequest(f"{uri}: a local directory must be an absolute path")
        return "file", str(Path(path).resolve())
    raise BadRequest(f"{uri}: grants are for s3://, hf:// or a local directory", param="uri")


def _refused(uri: str, org: str, command: str, example: str) -> SourceNotAllowed:
    return SourceNotAllowed(
        f"{uri}: org {org!r} may sync only from sources the operator allowed for it, and this "
        f"is not one of them; ask the operator (`turnout admin org {command} {org} {example}`)",
        param="model.weight_uri",
    )


def _covers(prefix: str, key: str) -> bool:
    """``ns/`` covers every repo of ns; ``b/p/`` every key under it; else an exact match."""
    return key == prefix or (prefix.endswith("/") and key.startswith(prefix))


def scoped_config(uri: str, config: SyncConfig, org: str, grants: Iterable[Grant]) -> SyncConfig:
    """The settings ``org``'s sync of ``uri`` runs with; SourceNotAllowed if it may not."""
    own = list(grants)
    scheme = uri.partition("://")[0].lower() if "://" in uri else "file"
    if scheme == "file":
        # LocalSource confines the path (after resolving symlinks) to these roots.
        roots = tuple(Path(g.prefix) for g in own if g.scheme == "file")
        return replace(config, allowed_local_roots=config.allowed_local_roots + roots)
    if scheme == "s3":
        key = _s3_key(uri)
        for grant in own:
            if grant.scheme == "s3" and _covers(grant.prefix, key):
                return replace(config, s3_profile=grant.credentials)
        if any(_covers(p, key) for p in config.allowed_s3_prefixes):
            return replace(config, s3_profile=None)
        raise _refused(uri, org, "s3-allow", "s3://BUCKET/PREFIX")
    if scheme == "hf":
        repo = _hf_key(uri)
        for grant in own:
            if grant.scheme == "hf" and _covers(grant.prefix, repo):
                return replace(config, hf_token=_hf_token(uri, org, grant.credentials))
        if any(_covers(p, repo) for p in config.allowed_hf_repos):
            return replace(config, hf_token=None)
        raise _refused(uri, org, "hf-allow", "hf://NAMESPACE")
    return config


def _hf_token(uri: str, org: str, variable: str | None) -> str | None:
    if variable is None:
        return None
    token = os.environ.get(variable)
    if not token:
        raise SourceNotAllowed(
            f"{uri}: the Hugging Face token the operator set for org {org!r} is not available "
            "on this server; ask the operator",
            param="model.weight_uri",
            code="source_credentials_missing",
        )
    return token


def grant_uri(scheme: str, prefix: str) -> str:
    """A stored grant as the operator writes it."""
    return prefix if scheme == "file" else f"{scheme}://{prefix}"
