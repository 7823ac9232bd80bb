"""``s3://bucket/prefix``: download a model directory from S3 or an S3-compatible store.

Objects are fetched as ranged GETs of ``part_size`` bytes by a pool of ``max_concurrency``
threads, each writing at its offset into ``work/<name>.part``; that is about twice as fast as
boto3's default transfer settings. Every response is checked against the listing (total size
from Content-Range, ETag), so an object replaced or truncated during the sync fails it instead
of mixing two versions. Finished parts are recorded in ``work/<name>.json`` after the data is
flushed, so a restarted sync with the same job id fetches only the parts it lacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

from turnout.errors import BadRequest
from turnout.registry.config import SyncConfig
from turnout.registry.sources.base import FetchContext, SyncFailed, run_blocking
from turnout.registry.validate import is_model_file

log = logging.getLogger(__name__)

_CHUNK: Final = 2**20
#: Sidecar fields that must match the listing for saved progress to be reused.
_IDENTITY: Final = ("key", "size", "etag", "part_size")
#: Errors while streaming a body: botocore does not retry these, so each part retries itself.
_STREAM_ERRORS: Final = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


@dataclass(frozen=True, slots=True)
class S3Object:
    key: str
    name: str
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class S3Source:
    uri: str
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str, config: SyncConfig) -> S3Source:
        parts = urlsplit(uri)
        if not parts.netloc:
            raise BadRequest(f"{uri}: an s3 weight_uri needs a bucket (s3://bucket/prefix)")
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"  # a prefix names a directory: s3://b/m must not match s3://b/m2/...
        return cls(uri, parts.netloc, prefix)

    async def fetch(self, ctx: FetchContext) -> None:
        client = await asyncio.to_thread(make_client, ctx.config)
        objects = await asyncio.to_thread(self.list_model_objects, client, ctx.config)
        ctx.meter.set_total(sum(o.size for o in objects))
        downloader = Downloader(client, self, objects, ctx)
        ctx.meter.add(downloader.resumed_bytes)
        await ctx.meter.report(force=True)
        await run_blocking(downloader.run, ctx)

    def list_model_objects(self, client: Any, config: SyncConfig) -> list[S3Object]:
        objects = []
        seen = 0
        with translate_client_error(self.uri, config):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    seen += 1
                    name = item["Key"][len(self.prefix) :]
                    if is_model_file(name):
                        objects.append(S3Object(item["Key"], name, item["Size"], item["ETag"]))
        if not objects:
            found = f"{seen} objects but no model files" if seen else "no objects"
            raise SyncFailed(
                f"{self.uri}: found {found} under the prefix; check the weight_uri "
                "(it must name the directory holding config.json and the safetensors files)"
            )
        if len(objects) > config.max_files:
            raise SyncFailed(f"{self.uri} holds {len(objects)} files; limit {config.max_files}")
        total = sum(o.size for o in objects)
        if total > config.max_total_bytes:
            raise SyncFailed(f"{self.uri} holds {total} bytes; limit {config.max_total_bytes}")
        return objects


def make_client(config: SyncConfig) -> Any:
    """An S3 client from the standard credential chain plus the server's S3 settings."""
    s3: dict[str, str] = {}
    if config.s3_addressing_style:
        s3["addressing_style"] = config.s3_addressing_style
    botocore_config = botocore.config.Config(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        retries={"max_attempts": config.max_retries, "mode": "standard"},
        max_pool_connections=config.max_concurrency,
        s3=s3 or None,
    )
    # A session per client: boto3's default session is shared state and not thread-safe.
    # The org's grant may name its own profile (its credentials, not the server's).
    try:
        session = boto3.session.Session(profile_name=config.s3_profile)
    except botocore.exceptions.ProfileNotFound as exc:
        log.warning("S3 profile %r of a grant is not configured: %s", config.s3_profile, exc)
        raise SyncFailed(
            "the S3 credentials the operator set for this org are not configured on the "
            "server; ask the operator"
        ) from exc
    return session.client(
        "s3",
        endpoint_url=config.s3_endpoint_url,
        region_name=config.s3_region,
        config=botocore_config,
    )


@dataclass(slots=True)
class _FileJob:
    obj: S3Object
    part_path: Path
    state_path: Path
    final_path: Path
    part_size: int
    done: set[int] = field(default_factory=set)
    fd: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: False once a response shows encryption under which the ETag is not the MD5.
    etag_is_md5: bool = True

    @property
    def parts(self) -> int:
        return max(1, -(-self.obj.size // self.part_size))

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.part_size
        return start, min(self.obj.size, start + self.part_size) - 1

    def state(self, *, complete: bool = False) -> dict[str, Any]:
        return {
            "key": self.obj.key,
            "size": self.obj.size,
            "etag": self.obj.etag,
            "part_size": self.part_size,
            "done": sorted(self.done),
            "complete": complete,
        }


class Downloader:
    """Ranged, parallel, resumable download of a listing into staging."""

    def __init__(self, client: Any, source: S3Source, objects: list[S3Object], ctx: FetchContext):
        self.client, self.source, self.ctx = client, source, ctx
        self.jobs = [self._resume(obj) for obj in objects]
        self.resumed_bytes = sum(self._done_bytes(job) for job in self.jobs)

    def _resume(self, obj: S3Object) -> _FileJob:
        work, model = self.ctx.staging.work, self.ctx.staging.model
        job = _FileJob(
            obj, work / f"{obj.name}.part", work / f"{obj.name}.json", model / obj.name,
            self.ctx.config.part_size,
        )  # fmt: skip
        saved = _load_state(job.state_path)
        fresh = job.state()
        same = saved is not None and all(saved.get(k) == fresh[k] for k in _IDENTITY)
        if same and saved is not None and saved.get("complete") and job.final_path.is_file():
            job.done = set(range(job.parts))
        elif same and saved is not None and job.part_path.is_file():
            job.done = {int(i) for i in saved.get("done", [])}
        else:
            # Unknown or stale state (the object changed since): start this file over.
            job.part_path.unlink(missing_ok=True)
            job.final_path.unlink(missing_ok=True)
        return job

    def _done_bytes(self, job: _FileJob) -> int:
        return sum(job.span(i)[1] - job.span(i)[0] + 1 for i in job.done if job.obj.size)

    def run(self) -> None:
        todo = [job for job in self.jobs if not job.final_path.is_file()]
        try:
            for job in todo:
                job.fd = os.open(job.part_path, os.O_RDWR | os.O_CREAT, 0o644)
                os.ftruncate(job.fd, job.obj.size)
            with ThreadPoolExecutor(self.ctx.config.max_concurrency) as pool:
                futures = [pool.submit(self._part, job, i) for job, i in self._pending(todo)]
                self._wait(futures)
            for job in todo:
                if len(job.done) == job.parts and job.obj.size == 0:
                    self._finish(job)
        except OSError as exc:
            raise SyncFailed(f"writing staged weights failed: {exc.strerror or exc}") from exc
        finally:
            for job in todo:
                if job.fd >= 0:
                    os.close(job.fd)
                    job.fd = -1

    def _pending(self, todo: list[_FileJob]) -> Iterator[tuple[_FileJob, int]]:
        for job in todo:
            if job.obj.size == 0:
                job.done = {0}
                continue
            for index in range(job.parts):
                if index not in job.done:
                    yield job, index

    def _wait(self, futures: list[Future[None]]) -> None:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in done if f.exception() is not None]
        if errors:
            # Tell the other threads to stop at their next part; the pool's exit waits for them.
            self.ctx.stop.set()
            failures = [e for e in errors if isinstance(e, SyncFailed)]
            raise (failures or errors)[0]  # type: ignore[misc]

    def _part(self, job: _FileJob, index: int) -> None:
        self.ctx.check_stop()
        start, end = job.span(index)
        self._fetch_range(job, start, end)
        with job.lock:
            job.done.add(index)
            complete = len(job.done) == job.parts
            # Data first, then the record that claims it: a crash must never leave a sidecar
            # naming a part whose bytes did not reach the disk.
            os.fdatasync(job.fd)
            if not complete:
                _save_state(job.state_path, job.state())
        if complete:
            self._finish(job)

    def _fetch_range(self, job: _FileJob, start: int, end: int) -> None:
        attempts = self.ctx.config.max_retries + 1
        got = 0
        for attempt in range(attempts):
            got = 0
            try:
                got = self._stream_range(job, start, end)
            except _STREAM_ERRORS:
                pass
            finally:
                if got != end - start + 1:
                    self.ctx.meter.add(-got)  # the retry fetches the whole range again
            if got == end - start + 1:
                return
            time.sleep(min(2.0, 0.2 * 2**attempt))
        raise SyncFailed(
            f"{self._where(job)}: the download was cut short (got {got} of "
            f"{end - start + 1} bytes at offset {start}, {attempts} attempts); the object may "
            "be truncated or the connection unstable — check the object's size and retry"
        )

    def _stream_range(self, job: _FileJob, start: int, end: int) -> int:
        with translate_client_error(self._where(job), self.ctx.config):
            response = self.client.get_object(
                Bucket=self.source.bucket, Key=job.obj.key, Range=f"bytes={start}-{end}"
            )
        self._check_identity(job, response)
        body = response["Body"]
        got = 0
        try:
            while chunk := body.read(_CHUNK):
                os.pwrite(job.fd, chunk, start + got)
                got += len(chunk)
                self.ctx.meter.add(len(chunk))
        finally:
            body.close()
        return got

    def _check_identity(self, job: _FileJob, response: dict[str, Any]) -> None:
        total = str(response.get("ContentRange", "")).rpartition("/")[2]
        etag = response.get("ETag")
        if total.isdigit() and int(total) != job.obj.size:
            raise SyncFailed(
                f"{self._where(job)}: the object is {total} bytes now but was listed with "
                f"{job.obj.size} bytes — it was truncated or replaced during the sync; "
                "upload it completely, then retry"
            )
        if etag and etag != job.obj.etag:
            raise SyncFailed(
                f"{self._where(job)}: the object changed during the sync (ETag {etag}, listed "
                f"as {job.obj.etag}); wait for the upload to finish, then retry"
            )
        if response.get("ServerSideEncryption", "").startswith("aws:kms") or response.get(
            "SSECustomerAlgorithm"
        ):
            job.etag_is_md5 = False

    def _finish(self, job: _FileJob) -> None:
        """Verify a complete file and move it into the model dir."""
        size = os.fstat(job.fd).st_size
        if size != job.obj.size:
            raise SyncFailed(f"{self._where(job)}: got {size} bytes, listed {job.obj.size}")
        etag = job.obj.etag.strip('"')
        if job.etag_is_md5 and "-" not in etag and _md5(job.fd) != etag:
            raise SyncFailed(
                f"{self._where(job)}: the downloaded bytes do not match the object's ETag "
                "(MD5); the object or the transfer is corrupt — upload it again and retry"
            )
        os.rename(job.part_path, job.final_path)
        _save_state(job.state_path, job.state(complete=True))

    def _where(self, job: _FileJob) -> str:
        return f"s3://{self.source.bucket}/{job.obj.key}"


def _md5(fd: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    offset = 0
    while chunk := os.pread(fd, 4 * _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _load_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


#: S3 error codes whose meaning we can explain; the rest are reported with their code.
_EXPLAINED: Final = {
    "NoSuchBucket": "the bucket does not exist; check the bucket name in the weight_uri",
    "InvalidAccessKeyId": (
        "the S3 access key id is not known to the store; check the server's AWS credentials "
        "(AWS_ACCESS_KEY_ID, AWS_PROFILE or the instance role)"
    ),
    "SignatureDoesNotMatch": (
        "the S3 secret key does not match the access key id; check AWS_SECRET_ACCESS_KEY"
    ),
    "AccessDenied": (
        "access denied; the server's credentials need s3:ListBucket on the bucket and "
        "s3:GetObject on the prefix"
    ),
    "NoSuchKey": "the object was deleted during the sync; upload it again, then retry",
    "InvalidRange": "the object shrank during the sync; upload it completely, then retry",
}


@contextmanager
def translate_client_error(where: str, config: SyncConfig) -> Iterator[None]:
    """Turn botocore's errors into a SyncFailed that names the object and what to do."""
    endpoint = config.s3_endpoint_url or "AWS S3"
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "unknown"))
        if code == "403" or code == "Forbidden":
            code = "AccessDenied"
        explained = _EXPLAINED.get(code) or f"S3 error {code}: {error.get('Message', exc)}"
        raise SyncFailed(f"{where}: {explained}") from exc
    except botocore.exceptions.NoCredentialsError as exc:
        raise SyncFailed(
            f"{where}: no AWS credentials found; give the server credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)"
        ) from exc
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
    ) as exc:
        raise SyncFailed(
            f"{where}: could not reach the S3 endpoint {endpoint} ({exc}); check "
            "TURNOUT_S3_ENDPOINT_URL and the network"
        ) from exc
