"""``hf://org/repo[@revision]``: a snapshot of a Hugging Face Hub repository.

huggingface_hub does the transfer (it resumes on its own); the snapshot lands in
``work/hub`` and only the model files are moved into the model dir, so the hub's cache
metadata never reaches the store. ``HF_ENDPOINT`` and ``HF_TOKEN`` are read at sync time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from turnout.errors import BadRequest
from turnout.registry.config import SyncConfig
from turnout.registry.sources.base import FetchContext, SyncFailed, run_blocking
from turnout.registry.validate import MODEL_SIDE_FILES, is_model_file

_REPO: Final = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_PATTERNS: Final = sorted(MODEL_SIDE_FILES) + ["*.safetensors", "*.safetensors.index.json"]


@dataclass(frozen=True, slots=True)
class HubSource:
    uri: str
    repo_id: str
    revision: str | None

    @classmethod
    def parse(cls, uri: str, config: SyncConfig) -> HubSource:
        repo, _, revision = uri.removeprefix("hf://").partition("@")
        if not _REPO.match(repo) or ".." in repo:
            raise BadRequest(f"{uri}: expected hf://org/repo or hf://org/repo@revision")
        return cls(uri, repo, revision or None)

    async def fetch(self, ctx: FetchContext) -> None:
        await run_blocking(partial(self._download, ctx), ctx)

    def _download(self, ctx: FetchContext) -> None:
        # Imported here: huggingface_hub reads its settings (HF_ENDPOINT...) at import time.
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        target = ctx.staging.work / "hub"
        # The org's own token or none: False stops huggingface_hub from using the server's
        # HF_TOKEN (or its saved login) for a tenant's repository.
        token: str | bool = ctx.config.hf_token or False
        try:
            info = HfApi(endpoint=endpoint, token=token).model_info(
                self.repo_id,
                revision=self.revision,
                files_metadata=True,
                timeout=ctx.config.read_timeout,
            )
        except Exception as exc:  # the hub client's own error types vary between its versions
            raise SyncFailed(
                f"{self.uri}: could not list the repository at {endpoint} "
                f"({type(exc).__name__}); check the name, the network or HF_ENDPOINT"
            ) from exc
        # Sizes first: nothing is downloaded for a repository over the limits.
        ctx.meter.set_total(_check_sizes(self.uri, info.siblings or [], ctx.config))
        try:
            snapshot_download(
                self.repo_id,
                revision=info.sha or self.revision,
                local_dir=target,
                allow_patterns=_PATTERNS,
                endpoint=endpoint,
                etag_timeout=ctx.config.connect_timeout,
                token=token,
            )
        except LocalEntryNotFoundError as exc:
            raise SyncFailed(
                f"{self.uri}: could not reach the Hugging Face Hub at {endpoint}; check the "
                "network or HF_ENDPOINT"
            ) from exc
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise SyncFailed(f"{self.uri}: download from {endpoint} failed: {exc}") from exc
        _move_model_files(target, ctx.staging.model, self.uri, ctx.config)


def _check_sizes(uri: str, siblings: list[Any], config: SyncConfig) -> int:
    """Before any byte is fetched: the repo's model files must fit the limits (the listing
    gives each file's size). Returns their total."""
    files = [f for f in siblings if is_model_file(f.rfilename) and "/" not in f.rfilename]
    sizes = [f.size for f in files]
    if any(size is None or size < 0 for size in sizes):
        raise SyncFailed(f"{uri}: the hub did not list the size of every model file; retry later")
    total = sum(int(size) for size in sizes)
    if len(files) > config.max_files or total > config.max_total_bytes:
        raise SyncFailed(
            f"{uri}: {len(files)} model files, {total} bytes exceed the limits "
            f"({config.max_files} files, {config.max_total_bytes} bytes); nothing was downloaded"
        )
    return total


def _move_model_files(src: Path, dst: Path, uri: str, config: SyncConfig) -> None:
    files = [p for p in src.iterdir() if p.is_file() and is_model_file(p.name)]
    total = sum(p.stat().st_size for p in files)
    if len(files) > config.max_files or total > config.max_total_bytes:
        raise SyncFailed(
            f"{uri}: {len(files)} files, {total} bytes exceed the limits "
            f"({config.max_files} files, {config.max_total_bytes} bytes)"
        )
    for path in files:
        path.rename(dst / path.name)
