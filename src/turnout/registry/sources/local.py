"""``file:///abs/dir`` (or ``/abs/dir``): copy a model directory from the local filesystem.

Local sources are confined to ``SyncConfig.allowed_local_roots`` (TURNOUT_ALLOWED_LOCAL_ROOTS):
a user of the management API must not be able to make the server read ``/etc`` or another
tenant's files. Paths are checked after resolving symlinks and ``..``, both for the directory
and for every file in it, so a symlink inside an allowed directory cannot point outside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

from turnout.errors import BadRequest, SourceNotAllowed
from turnout.registry.config import SyncConfig
from turnout.registry.sources.base import FetchContext, SyncFailed, run_blocking
from turnout.registry.validate import is_model_file

log = logging.getLogger(__name__)

_CHUNK: Final = 8 * 2**20
_SETTING: Final = "TURNOUT_ALLOWED_LOCAL_ROOTS"


@dataclass(frozen=True, slots=True)
class LocalSource:
    uri: str
    path: Path
    roots: tuple[Path, ...]

    @classmethod
    def parse(cls, uri: str, config: SyncConfig) -> LocalSource:
        raw = unquote(urlsplit(uri).path) if uri.startswith("file:") else uri
        if uri.startswith("file:") and urlsplit(uri).netloc not in ("", "localhost"):
            raise BadRequest(f"{uri}: file:// URIs name a local path (file:///abs/dir)")
        if not raw.startswith("/"):
            raise BadRequest(f"{uri}: a local weight_uri must be an absolute path")
        if not config.allowed_local_roots:
            raise SourceNotAllowed(
                f"{uri}: local weight sources are not allowed for your org on this server; "
                f"ask the operator ({_SETTING}, or `turnout admin org file-allow`)",
                param="model.weight_uri",
            )
        source = cls(uri, Path(raw), tuple(r.resolve() for r in config.allowed_local_roots))
        source.confine(source.path.resolve(), what=uri)
        return source

    def confine(self, real: Path, *, what: str) -> None:
        if not any(real.is_relative_to(root) for root in self.roots):
            # The tenant learns the rule, not where the path leads nor what is allowed.
            log.warning("refused %s: resolves to %s, outside %s", what, real, self.roots)
            raise SourceNotAllowed(
                f"{what} is outside the local directories your org may sync from (symlinks "
                f"and '..' are followed first); ask the operator to allow its directory "
                f"({_SETTING}, or `turnout admin org file-allow`)",
                param="model.weight_uri",
            )

    async def fetch(self, ctx: FetchContext) -> None:
        await run_blocking(partial(self._copy_all, ctx), ctx)

    def _copy_all(self, ctx: FetchContext) -> None:
        files = self._model_files(ctx)
        ctx.meter.set_total(sum(size for _, _, size in files))
        for name, path, _ in files:
            ctx.check_stop()
            _copy(path, ctx.staging.model / name, ctx)

    def _model_files(self, ctx: FetchContext) -> list[tuple[str, Path, int]]:
        """(name in the model dir, resolved path, size) of every model file to copy."""
        try:
            real_dir = self.path.resolve(strict=True)
            self.confine(real_dir, what=self.uri)
            if not real_dir.is_dir():
                raise SyncFailed(f"{self.uri} is not a directory; point it at the model dir")
            files = []
            for entry in sorted(real_dir.iterdir()):
                if not is_model_file(entry.name):
                    continue
                real = entry.resolve(strict=True)
                self.confine(real, what=f"{entry.name} in {self.uri}")
                if real.is_file():
                    files.append((entry.name, real, real.stat().st_size))
        except SourceNotAllowed as exc:
            raise SyncFailed(exc.message) from exc
        except OSError as exc:
            log.warning("cannot read %s: %s", self.uri, exc)
            raise SyncFailed(f"cannot read {self.uri}: {exc.strerror or 'I/O error'}") from exc
        _check_limits(self.uri, files, ctx.config)
        return files


def _check_limits(uri: str, files: list[tuple[str, Path, int]], config: SyncConfig) -> None:
    if len(files) > config.max_files:
        raise SyncFailed(f"{uri} holds {len(files)} model files; the limit is {config.max_files}")
    total = sum(size for _, _, size in files)
    if total > config.max_total_bytes:
        raise SyncFailed(
            f"{uri} holds {total} bytes of model files; the limit is {config.max_total_bytes}"
        )


def _copy(src: Path, dst: Path, ctx: FetchContext) -> None:
    try:
        with src.open("rb", buffering=0) as fin, dst.open("wb", buffering=0) as fout:
            while chunk := fin.read(_CHUNK):
                fout.write(chunk)
                ctx.meter.add(len(chunk))
    except OSError as exc:
        log.warning("copying %s to %s failed: %s", src, dst, exc)
        raise SyncFailed(f"copying {src.name} failed: {exc.strerror or 'I/O error'}") from exc
