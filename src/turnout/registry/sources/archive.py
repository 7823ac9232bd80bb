"""Safe extraction of a model directory from a tar archive (plain, gzip, bz2 or xz).

Every member passes :func:`tarfile.data_filter` (no absolute paths, no ``..``, no links that
point outside, no devices or FIFOs) before anything is written; one bad member fails the whole
archive, because an archive that tries to escape is hostile, not merely untidy. Only regular
model files from the directory that holds ``config.json`` are written, and they are read
through ``extractfile`` into files we name ourselves, so the archive never chooses a path on
disk. Sizes declared in member headers count against ``max_total_bytes`` before their data is
decompressed, which stops a compression bomb early.
"""

from __future__ import annotations

import posixpath
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from turnout.registry.config import SyncConfig
from turnout.registry.sources.base import SyncFailed
from turnout.registry.validate import is_model_file


def extract_model_files(archive: Path, model_dir: Path, uri: str, config: SyncConfig) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _checked_members(tar, model_dir, uri, config)
            root = _model_root(members, uri)
            for member in members:
                parent, name = posixpath.split(posixpath.normpath(member.name))
                if parent == root and is_model_file(name) and not member.isdir():
                    _extract(tar, member, model_dir / name, uri)
    except (tarfile.ReadError, EOFError, zlib.error) as exc:
        raise SyncFailed(
            f"{uri} is not a readable tar archive ({exc}); serve a .tar, .tar.gz or .tgz of "
            "the model directory, or a .json manifest"
        ) from exc


def _checked_members(
    tar: tarfile.TarFile, dest: Path, uri: str, config: SyncConfig
) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:
        if len(members) >= config.max_files:
            raise SyncFailed(f"{uri} holds more than {config.max_files} entries; the limit")
        try:
            # data_filter would quietly strip a leading "/"; an archive that asks for one is
            # refused instead, like one that climbs out with "..".
            if member.name.startswith("/") or ".." in PurePosixPath(member.name).parts:
                raise tarfile.AbsolutePathError(member)
            tarfile.data_filter(member, str(dest))
        except tarfile.FilterError as exc:
            raise SyncFailed(
                f"{uri}: archive member {member.name!r} is refused ({exc}); archives may "
                "hold only regular files and directories inside the model directory"
            ) from exc
        if member.isfile():
            total += member.size
            if total > config.max_total_bytes:
                raise SyncFailed(
                    f"{uri} unpacks to more than {config.max_total_bytes} bytes; the limit "
                    "is max_total_bytes"
                )
        members.append(member)
    return members


def _model_root(members: list[tarfile.TarInfo], uri: str) -> str:
    """The archive directory holding config.json ("" for the top level), shallowest first."""
    roots = [
        posixpath.dirname(posixpath.normpath(m.name))
        for m in members
        if posixpath.basename(posixpath.normpath(m.name)) == "config.json" and not m.isdir()
    ]
    if not roots:
        raise SyncFailed(
            f"{uri}: the archive holds no config.json; archive the model directory itself"
        )
    root = min(roots, key=lambda r: (len(PurePosixPath(r).parts), r))
    return "" if root == "." else root


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, uri: str) -> None:
    # extractfile also resolves in-archive hard and symbolic links (data_filter has already
    # refused the ones that point outside), reading archive bytes rather than the filesystem.
    source = tar.extractfile(member)
    if source is None:
        raise SyncFailed(f"{uri}: archive member {member.name!r} is not a regular file")
    with source, dest.open("wb") as out:
        shutil.copyfileobj(source, out, 4 * 2**20)
