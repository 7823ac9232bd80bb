"""A node's own copy of model weights, fetched from the control plane by digest.

A replica on a node without the control plane's weight store calls :func:`ensure_local`: it
returns ``cache_dir/<hex>`` once that holds the version's files, fetching them first if needed
(once per node per digest: concurrent replicas wait on a file lock, then find them there).

Every file is checked against the manifest's size and sha256 as it streams in, and the
manifest against the digest, so a bad or hostile transfer is never served. A fetch that fails
leaves nothing behind but its own partial directory, which the next try replaces. The manifest
is kept beside the copy (``<hex>.manifest.json``); a cached copy whose files no longer have
their recorded sizes (a truncated disk write, a hand edit) is fetched again.

Files are fetched a few at a time (checkpoints come in shards), each in large chunks whose
hashing runs while the next chunk arrives: sha256 and socket reads both release the GIL.

Runs on fleet nodes: imports nothing of the control plane.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import httpx

from turnout.registry.weightstore import FileEntry, Manifest, manifest_digest

_CHUNK: Final = 4 * 2**20
#: Files fetched at once.
_PARALLEL: Final = 4

#: ``progress(bytes_done, bytes_total)`` after each chunk (called from fetching threads).
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
    if len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise FetchFailed(f"{digest!r} is not a sha256 digest")
    final = cache_dir / hexdigest
    if _complete(final, hexdigest):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".{hexdigest}.lock"):
        if _complete(final, hexdigest):  # another replica on this node fetched it meanwhile
            return final
        shutil.rmtree(final, ignore_errors=True)  # a damaged copy
        partial = cache_dir / f".{hexdigest}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        headers = {"Authorization": f"Bearer {token}"}
        base = f"{url.rstrip('/')}/internal/v1/weights/{hexdigest}"
        limits = httpx.Limits(max_connections=_PARALLEL)
        with httpx.Client(headers=headers, timeout=timeout, trust_env=False, limits=limits) as http:
            manifest = _manifest(http, base, hexdigest)
            _fetch_all(http, base, manifest, partial, progress)
        _fsync_dir(partial)
        _manifest_path(final).write_text(manifest.to_json())
        os.rename(partial, final)
        _fsync_dir(cache_dir)
    return final


def _manifest_path(final: Path) -> Path:
    return final.with_name(f"{final.name}.manifest.json")


def _complete(final: Path, hexdigest: str) -> bool:
    """True if ``final`` holds exactly the files its saved manifest lists, at their sizes."""
    if not final.is_dir():
        return False
    try:
        manifest = Manifest.from_json(_manifest_path(final).read_text())
    except (OSError, ValueError, KeyError):
        return False
    if manifest.hexdigest != hexdigest:
        return False
    try:
        sizes = {p.name: p.stat().st_size for p in final.iterdir()}
    except OSError:
        return False
    return sizes == {f.path: f.size for f in manifest.files}


def _manifest(http: httpx.Client, base: str, hexdigest: str) -> Manifest:
    try:
        resp = http.get(f"{base}/manifest")
        resp.raise_for_status()
        manifest = Manifest.from_json(resp.text)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise FetchFailed(f"cannot read the manifest of sha256:{hexdigest}: {exc}") from exc
    if manifest_digest(manifest.files) != hexdigest:
        raise FetchFailed(f"the manifest served for sha256:{hexdigest} does not match it")
    for entry in manifest.files:
        if "/" in entry.path or entry.path in ("", ".", ".."):
            raise FetchFailed(f"the manifest of sha256:{hexdigest} names a bad file {entry.path!r}")
    return manifest


def _fetch_all(
    http: httpx.Client,
    base: str,
    manifest: Manifest,
    into: Path,
    progress: Progress | None,
) -> None:
    done = 0
    lock = threading.Lock()

    def advance(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            now = done
        if progress is not None:
            progress(now, manifest.total_bytes)

    # Largest first, so one big shard does not start last.
    entries = sorted(manifest.files, key=lambda f: -f.size)
    with ThreadPoolExecutor(max_workers=max(1, min(_PARALLEL, len(entries)))) as pool:
        futures = [pool.submit(_fetch_file, http, base, e, into, advance) for e in entries]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # the first failure decides: files not begun never start
                future.cancel()
            raise


def _fetch_file(
    http: httpx.Client,
    base: str,
    entry: FileEntry,
    into: Path,
    advance: Callable[[int], None],
) -> None:
    sha = hashlib.sha256()
    size = 0
    try:
        with (
            http.stream("GET", f"{base}/files/{entry.path}") as resp,
            (into / entry.path).open("wb") as out,
        ):
            resp.raise_for_status()
            for chunk in resp.iter_bytes(_CHUNK):
                size += len(chunk)
                if size > entry.size:
                    break  # more than the manifest promises: never written to disk
                out.write(chunk)
                sha.update(chunk)
                advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except (httpx.HTTPError, OSError) as exc:
        raise FetchFailed(f"fetching {entry.path} failed: {exc}") from exc
    if size != entry.size or sha.hexdigest() != entry.sha256:
        raise FetchFailed(
            f"{entry.path} does not match its digest (got {size} bytes"
            + (f", sha256 {sha.hexdigest()}" if size == entry.size else " or more")
            + f"; expected {entry.size} bytes, sha256 {entry.sha256})"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (held while fetching one digest on this node)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
