"""The content-addressed weight store: staging, digests and atomic publication.

Layout under ``weights_dir``::

    sha256/<hex>/            published, read-only model directories, one per distinct content
    manifests/<hex>.json     each one's manifest (names, sizes, sha256), for fleet nodes
    .staging/<job>/model/    files being gathered for one sync job
    .staging/<job>/work/     a source's scratch space (partial downloads, resume sidecars)

A digest is the sha256 of the manifest: one line ``<relative path>\\t<size>\\t<file sha256>\\n``
per file, sorted by path (see :func:`manifest_digest`). Publishing renames the staged ``model``
directory onto ``sha256/<hex>`` — one ``rename(2)``, so readers see all of it or nothing —
and, when that directory already exists, keeps the existing copy: identical content is stored
once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Read size for hashing; large enough that hashlib (which releases the GIL) dominates.
_CHUNK: Final = 4 * 2**20
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


class StagingBusy(Exception):
    """Another sync holds this job's staging directory."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    files: tuple[FileEntry, ...]

    @property
    def hexdigest(self) -> str:
        return manifest_digest(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]
        return json.dumps({"digest": f"sha256:{self.hexdigest}", "files": files})

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        return cls(tuple(FileEntry(f["path"], int(f["size"]), f["sha256"]) for f in raw["files"]))


@dataclass(frozen=True, slots=True)
class Staging:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def work(self) -> Path:
        return self.root / "work"


def manifest_digest(files: tuple[FileEntry, ...] | list[FileEntry]) -> str:
    lines = "".join(f"{f.path}\t{f.size}\t{f.sha256}\n" for f in sorted(files, key=_by_path))
    return hashlib.sha256(lines.encode()).hexdigest()


def _by_path(entry: FileEntry) -> str:
    return entry.path


def safe_job_name(job_id: str) -> str:
    """A directory name for ``job_id``: readable, and distinct for distinct ids."""
    readable = _UNSAFE.sub("_", job_id).strip("._")[:80] or "job"
    return f"{readable}-{hashlib.sha256(job_id.encode()).hexdigest()[:12]}"


class WeightStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def published_root(self) -> Path:
        return self.root / "sha256"

    @property
    def staging_root(self) -> Path:
        return self.root / ".staging"

    @property
    def manifests_root(self) -> Path:
        return self.root / "manifests"

    def path_for(self, hexdigest: str) -> Path:
        return self.published_root / hexdigest

    def manifest_path(self, hexdigest: str) -> Path:
        """Where a published directory's manifest is kept (beside the store, not in it)."""
        return self.manifests_root / f"{hexdigest}.json"

    def manifest(self, hexdigest: str) -> Manifest:
        """The published directory's manifest (its files' names, sizes and sha256), kept
        beside it at publication; computed once for directories published before that."""
        if not _HEX64.fullmatch(hexdigest) or not self.path_for(hexdigest).is_dir():
            raise FileNotFoundError(f"no published weights with digest sha256:{hexdigest}")
        saved = self.manifest_path(hexdigest)
        try:
            return Manifest.from_json(saved.read_text())
        except (OSError, ValueError, KeyError):
            pass
        manifest = hash_model_dir(self.path_for(hexdigest))
        if manifest.hexdigest != hexdigest:
            raise ValueError(f"weights sha256:{hexdigest} no longer match their digest")
        self.manifests_root.mkdir(exist_ok=True)
        _write_atomically(saved, manifest.to_json())
        return manifest

    def staging_for(self, job_id: str) -> Staging:
        return Staging(self.staging_root / safe_job_name(job_id))

    @contextmanager
    def staging(self, job_id: str) -> Iterator[Staging]:
        """Create (or reopen, to resume) the job's staging dir and hold its lock."""
        staging = self.staging_for(job_id)
        staging.model.mkdir(parents=True, exist_ok=True)
        staging.work.mkdir(exist_ok=True)
        fd = os.open(staging.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StagingBusy(str(staging.root)) from exc
            yield staging
        finally:
            os.close(fd)

    def discard(self, job_id: str) -> None:
        remove_tree(self.staging_for(job_id).root)

    def publish(self, staging: Staging, manifest: Manifest) -> Path:
        """Move the staged model dir into the store; return the published path."""
        target = self.path_for(manifest.hexdigest)
        self.published_root.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            remove_tree(staging.root)
            return target
        _make_durable(staging.model)
        try:
            os.rename(staging.model, target)
        except OSError as exc:
            # Another job published the same content between our check and the rename.
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
                raise
            remove_tree(staging.root)
            return target
        # The directory is made read-only only after the rename: Linux needs write permission
        # on a directory to move it to another parent (its ".." entry changes).
        target.chmod(0o555)
        self.manifests_root.mkdir(exist_ok=True)
        _write_atomically(self.manifest_path(manifest.hexdigest), manifest.to_json())
        _fsync_dir(self.published_root)
        remove_tree(staging.root)
        return target


def hash_model_dir(model_dir: Path, workers: int = 4) -> Manifest:
    """sha256 of every file in ``model_dir`` (flat), hashed in parallel threads."""
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
        entries = tuple(pool.map(_hash_file, files))
    return Manifest(entries)


def _hash_file(path: Path) -> FileEntry:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb", buffering=0) as fh:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    return FileEntry(path.name, size, digest.hexdigest())


def _make_durable(model_dir: Path) -> None:
    for path in model_dir.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        path.chmod(0o444)
    _fsync_dir(model_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a staging tree; absent is fine.

    Staging holds no read-only directories (only published dirs are made read-only, after
    they leave staging), and read-only files in a writable dir can be unlinked.
    """
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
