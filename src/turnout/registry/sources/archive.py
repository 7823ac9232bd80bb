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
from typing import Final

from turnout.registry.config import SyncConfig
from turnout.registry.sources.base import SyncFailed
from turnout.registry.validate import is_model_file

#: The largest pax or GNU long-name header data tarfile may read. tarfile reads such a header's
#: whole declared size into memory before it looks at it; a real one is a few hundred bytes.
MAX_META_HEADER: Final = 64 * 2**10
#: Links followed to find what a link member points at.
MAX_LINK_HOPS: Final = 16

_META_TYPES: Final = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
     tarfile.GNUTYPE_LONGLINK}
)  # fmt: skip


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses an oversized pax or long-name header before tarfile reads its data."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > MAX_META_HEADER:
            raise _HeaderTooLarge(self.size)
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]


class _HeaderTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def extract_model_files(archive: Path, model_dir: Path, uri: str, config: SyncConfig) -> None:
    try:
        with tarfile.open(archive, "r:*", tarinfo=_BoundedTarInfo) as tar:
            members = _checked_members(tar, model_dir, uri, config)
            root = _model_root(members, uri)
            for member in members:
                parent, name = posixpath.split(posixpath.normpath(member.name))
                if parent == root and is_model_file(name) and not member.isdir():
                    _extract(tar, member, model_dir / name, uri)
    except _HeaderTooLarge as exc:
        raise SyncFailed(
            f"{uri}: an archive header declares {exc.size} bytes of metadata (the limit is "
            f"{MAX_META_HEADER}); the archive is corrupt or hostile"
        ) from exc
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
            _check_total(total, uri, config)
        members.append(member)
    # A link is extracted as a copy of what it points at: each one counts that size again,
    # so ten thousand links to one large file cannot unpack to ten thousand copies.
    files = {posixpath.normpath(m.name): m for m in members}
    for member in members:
        if member.issym() or member.islnk():
            total += _link_size(member, files, uri)
            _check_total(total, uri, config)
    return members


def _check_total(total: int, uri: str, config: SyncConfig) -> None:
    if total > config.max_total_bytes:
        raise SyncFailed(
            f"{uri} unpacks to more than {config.max_total_bytes} bytes (links count as the "
            "files they point at); the limit is max_total_bytes"
        )


def _link_size(member: tarfile.TarInfo, files: dict[str, tarfile.TarInfo], uri: str) -> int:
    """The size of the regular file a link resolves to inside the archive (0 for a link to a
    directory or to nothing, which extraction refuses or skips)."""
    current = member
    for _ in range(MAX_LINK_HOPS):
        if current.islnk():
            target = posixpath.normpath(current.linkname)
        elif current.issym():
            target = posixpath.normpath(
                posixpath.join(posixpath.dirname(current.name), current.linkname)
            )
        else:
            return current.size if current.isfile() else 0
        found = files.get(target)
        if found is None:
            return 0
        current = found
    raise SyncFailed(f"{uri}: archive member {member.name!r} is a chain of more than "
                     f"{MAX_LINK_HOPS} links; archive the files themselves")  # fmt: skip


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
