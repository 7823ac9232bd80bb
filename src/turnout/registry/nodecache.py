"""A node's own copy of model weights, fetched from the control plane by digest.

A replica on a node without the control plane's weight store calls :func:`ensure_local`: it
returns ``cache_dir/<hex>`` once that holds the version's files, fetching them first if needed
(once per node per digest: concurrent replicas wait on a file lock, then find them there).
Every file is checked against the manifest's size and sha256 and the manifest against the
digest, so a bad or hostile transfer is never served; a fetch that fails leaves nothing behind
but its own partial directory, which the next try replaces.

Runs on fleet nodes: imports nothing of the control plane.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import httpx

from turnout.registry.weightstore import FileEntry, Manifest, manifest_digest

_CHUNK: Final = 4 * 2**20

#: ``progress(bytes_done, bytes_total)`` after each chunk.
Progress = Callable[[int, int], None]


class FetchFailed(Exception):
    """The weights could not be fetched or did not match their digest; the message says which."""


def ensure_local(
    digest: str,
    url: str,
    token: str,
    cache_dir: Path,
    progress: Progress | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """The directory of ``digest``'s files on this node, fetched from ``url`` if missing."""
    hexdigest = digest.removeprefix("sha256:")
    final = cache_dir / hexdigest
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".{hexdigest}.lock"):
        if final.is_dir():  # another replica on this node fetched it while we waited
            return final
        partial = cache_dir / f".{hexdigest}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        headers = {"Authorization": f"Bearer {token}"}
        base = f"{url.rstrip('/')}/internal/v1/weights/{hexdigest}"
        with httpx.Client(headers=headers, timeout=timeout, trust_env=False) as http:
            manifest = _manifest(http, base, hexdigest)
            done = 0
            for entry in manifest.files:
                done = _fetch_file(http, base, entry, partial, done, manifest, progress)
        os.rename(partial, final)
    return final


def _manifest(http: httpx.Client, base: str, hexdigest: str) -> Manifest:
    try:
        resp = http.get(f"{base}/manifest")
        resp.raise_for_status()
        manifest = Manifest.from_json(resp.text)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise FetchFailed(f"cannot read the manifest of sha256:{hexdigest}: {exc}") from exc
    if manifest_digest(manifest.files) != hexdigest:
        raise FetchFailed(f"the manifest served for sha256:{hexdigest} does not match it")
    for entry in manifest.files:
        if "/" in entry.path or entry.path in ("", ".", ".."):
            raise FetchFailed(f"the manifest of sha256:{hexdigest} names a bad file {entry.path!r}")
    return manifest


def _fetch_file(
    http: httpx.Client,
    base: str,
    entry: FileEntry,
    into: Path,
    done: int,
    manifest: Manifest,
    progress: Progress | None,
) -> int:
    sha = hashlib.sha256()
    size = 0
    try:
        with (
            http.stream("GET", f"{base}/files/{entry.path}") as resp,
            (into / entry.path).open("wb") as out,
        ):
            resp.raise_for_status()
            for chunk in resp.iter_bytes(_CHUNK):
                out.write(chunk)
                sha.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(done + size, manifest.total_bytes)
            out.flush()
            os.fsync(out.fileno())
    except (httpx.HTTPError, OSError) as exc:
        raise FetchFailed(f"fetching {entry.path} failed: {exc}") from exc
    if size != entry.size or sha.hexdigest() != entry.sha256:
        raise FetchFailed(
            f"{entry.path} does not match its digest ({size} bytes, sha256 {sha.hexdigest()}; "
            f"expected {entry.size} bytes, {entry.sha256})"
        )
    return done + size


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (held while fetching one digest on this node)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
