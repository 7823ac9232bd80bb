"""``https://``: a tar archive of the model directory, or a JSON manifest of its files.

* ``.tar``, ``.tar.gz``, ``.tgz`` (or any non-``.json`` URL): the archive is streamed to
  ``work/archive`` and its model files are extracted from the directory holding ``config.json``.
* ``.json``: ``{"files": [{"path": "config.json", "url": "...", "size": N, "sha256": "..."}]}``;
  relative URLs are resolved against the manifest's URL; every file is checked against its size
  and sha256 while it streams.

The server must not become a way to reach internal services (SSRF): a host that resolves to a
loopback, private, link-local or reserved address is refused unless it is in ``allowed_hosts``
(TURNOUT_ALLOWED_HOSTS). The check runs in the resolver that aiohttp connects with, so a name
cannot resolve to a public address when checked and a private one when used. Plain ``http://``
is accepted only for allowed hosts (internal mirrors); public sources must use TLS. Redirects
are followed by hand so that each hop is checked too.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from turnout.errors import BadRequest, SourceNotAllowed
from turnout.registry.config import SyncConfig
from turnout.registry.sources.archive import extract_model_files
from turnout.registry.sources.base import FetchContext, SyncFailed, run_blocking
from turnout.registry.validate import is_model_file

_CHUNK: Final = 2**20
_MAX_MANIFEST: Final = 16 * 2**20
_MAX_REDIRECTS: Final = 5
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_SETTING: Final = "TURNOUT_ALLOWED_HOSTS"
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


class AddressRefused(OSError):
    """A host resolved to an address the server may not contact."""


def refused_address(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not addr.is_global or addr.is_multicast


def check_url(url: str, allowed_hosts: tuple[str, ...]) -> None:
    """Scheme and literal-address policy; resolved names are checked by the resolver."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise BadRequest(f"{url}: expected an https:// URL with a host", param="model.weight_uri")
    allowed = host in allowed_hosts
    if parts.scheme == "http" and not allowed:
        raise SourceNotAllowed(
            f"{url}: plain http is accepted only from hosts in {_SETTING}; use https",
            param="model.weight_uri",
        )
    try:
        literal = refused_address(host)
    except ValueError:
        literal = host == "localhost" or host.endswith(".localhost")
    if literal and not allowed:
        raise SourceNotAllowed(
            f"{url}: {host} is a loopback, private or reserved address; the operator can "
            f"allow it with {_SETTING}",
            param="model.weight_uri",
        )


class GuardedResolver(AbstractResolver):
    """Resolves like the system does, then refuses non-public addresses of unlisted hosts."""

    def __init__(self, allowed_hosts: tuple[str, ...]) -> None:
        self._inner = ThreadedResolver()
        self._allowed = allowed_hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower() not in self._allowed:
            bad = [r["host"] for r in results if refused_address(r["host"])]
            if bad:
                raise AddressRefused(
                    f"{host} resolves to {', '.join(bad)}, a loopback, private or reserved "
                    f"address; the operator can allow the host with {_SETTING}"
                )
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class WebSource:
    uri: str

    @classmethod
    def parse(cls, uri: str, config: SyncConfig) -> WebSource:
        check_url(uri, config.allowed_hosts)
        return cls(uri)

    async def fetch(self, ctx: FetchContext) -> None:
        config = ctx.config
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.read_timeout
        )
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(config.allowed_hosts), limit=config.max_concurrency
        )
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            fetcher = Fetcher(session, ctx)
            if urlsplit(self.uri).path.endswith(".json"):
                await self._fetch_manifest(fetcher, ctx)
            else:
                await self._fetch_archive(fetcher, ctx)

    async def _fetch_archive(self, fetcher: Fetcher, ctx: FetchContext) -> None:
        archive = ctx.staging.work / "archive"
        await fetcher.download(self.uri, archive, limit=ctx.config.max_total_bytes)
        await run_blocking(
            lambda: extract_model_files(archive, ctx.staging.model, self.uri, ctx.config), ctx
        )
        archive.unlink()

    async def _fetch_manifest(self, fetcher: Fetcher, ctx: FetchContext) -> None:
        raw = await fetcher.read(self.uri, limit=_MAX_MANIFEST)
        entries = parse_manifest(raw, self.uri, ctx.config)
        ctx.meter.set_total(sum(e.size for e in entries))
        await ctx.meter.report(force=True)
        limit = asyncio.Semaphore(ctx.config.max_concurrency)

        async def one(entry: ManifestEntry) -> None:
            async with limit:
                await fetcher.download(
                    entry.url, ctx.staging.model / entry.path, limit=entry.size, expect=entry
                )

        # gather, not a TaskGroup: the first SyncFailed should surface as itself, not wrapped
        # in an ExceptionGroup; the other downloads are cancelled and awaited before it does.
        tasks = [asyncio.create_task(one(entry)) for entry in entries]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    path: str
    url: str
    size: int
    sha256: str


def parse_manifest(raw: bytes, uri: str, config: SyncConfig) -> list[ManifestEntry]:
    try:
        files = json.loads(raw)["files"]
        entries = [
            ManifestEntry(str(f["path"]), urljoin(uri, str(f["url"])), int(f["size"]),
                          str(f["sha256"]).lower())
            for f in files
        ]  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise SyncFailed(
            f"{uri} is not a valid manifest ({exc!r}); expected "
            '{"files": [{"path": ..., "url": ..., "size": ..., "sha256": ...}]}'
        ) from exc
    for entry in entries:
        # A negative size would lower the total under the limit and then stream unbounded.
        if entry.size < 0 or not _SHA256.fullmatch(entry.sha256):
            raise SyncFailed(
                f"{uri}: manifest entry {entry.path!r} needs a size >= 0 and a 64-digit hex sha256"
            )
        if "/" in entry.path or "\\" in entry.path or entry.path in ("", ".", ".."):
            raise SyncFailed(
                f"{uri}: manifest path {entry.path!r} escapes the model directory; "
                "list plain file names"
            )
    kept = [e for e in entries if is_model_file(e.path)]
    if len(entries) > config.max_files:
        raise SyncFailed(f"{uri} lists {len(entries)} files; the limit is {config.max_files}")
    total = sum(e.size for e in kept)
    if total > config.max_total_bytes:
        raise SyncFailed(
            f"{uri} lists {total} bytes of model files; the limit is {config.max_total_bytes}"
        )
    for entry in kept:
        try:
            check_url(entry.url, config.allowed_hosts)
        except BadRequest as exc:
            raise SyncFailed(f"{uri}: {entry.path}: {exc.message}") from exc
    return kept


class Fetcher:
    """GETs with checked redirects, bounded retries with backoff, and streaming limits."""

    def __init__(self, session: aiohttp.ClientSession, ctx: FetchContext) -> None:
        self.session, self.ctx = session, ctx

    async def read(self, url: str, *, limit: int) -> bytes:
        path = self.ctx.staging.work / "manifest.json"
        await self.download(url, path, limit=limit, count=False)
        return await asyncio.to_thread(path.read_bytes)

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        limit: int,
        expect: ManifestEntry | None = None,
        count: bool = True,
    ) -> None:
        attempts = self.ctx.config.max_retries + 1
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            try:
                await self._attempt(url, dest, limit, expect, count)
                return
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                refusal = _refusal(exc)
                if refusal is not None:
                    raise SyncFailed(f"{url}: {refusal}") from exc
                if last:
                    raise SyncFailed(
                        f"{url}: could not be reached, or the transfer broke off, in "
                        f"{attempts} attempts ({type(exc).__name__}: {exc}); check the URL "
                        "and that the host is up"
                    ) from exc
            except _Retryable as exc:
                if last:
                    raise SyncFailed(
                        f"{url}: the server answered HTTP {exc} {attempts} times; retry later"
                    ) from exc
            await asyncio.sleep(min(2.0, 0.2 * 2**attempt))

    async def _attempt(
        self, url: str, dest: Path, limit: int, expect: ManifestEntry | None, count: bool
    ) -> None:
        counted = 0
        try:
            async with await self._get(url) as response:
                self._check_response(url, response, limit, expect, count)
                sink = _Sink(dest)
                try:
                    async for chunk in response.content.iter_chunked(_CHUNK):
                        if sink.size + len(chunk) > limit:
                            raise SyncFailed(_too_big(url, sink.size + len(chunk), limit))
                        await asyncio.to_thread(sink.write, chunk)
                        if count:
                            self.ctx.meter.add(len(chunk))
                            counted += len(chunk)
                finally:
                    sink.close()
        except BaseException:
            self.ctx.meter.add(-counted)  # a retry fetches the whole file again
            raise
        if expect is not None:
            _verify(url, sink, expect)

    def _check_response(
        self,
        url: str,
        response: aiohttp.ClientResponse,
        limit: int,
        expect: ManifestEntry | None,
        count: bool,
    ) -> None:
        if response.status >= 500:
            raise _Retryable(response.status)
        if response.status != 200:
            raise SyncFailed(f"{url}: HTTP {response.status} {response.reason}; check the URL")
        if response.content_length is not None and response.content_length > limit:
            raise SyncFailed(_too_big(url, response.content_length, limit))
        if count and expect is None and response.content_length:
            self.ctx.meter.set_total(response.content_length)

    async def _get(self, url: str) -> aiohttp.ClientResponse:
        for _ in range(_MAX_REDIRECTS + 1):
            response = await self.session.get(url, allow_redirects=False)
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location", "")
            response.release()
            url = urljoin(url, location)
            try:
                check_url(url, self.ctx.config.allowed_hosts)
            except BadRequest as exc:
                raise SyncFailed(f"redirect refused: {exc.message}") from exc
        raise SyncFailed(f"{url}: more than {_MAX_REDIRECTS} redirects")


class _Retryable(Exception):
    """A 5xx answer: worth another attempt."""


class _Sink:
    """A file being written plus its running sha256."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        self.file.close()


def _verify(url: str, sink: _Sink, expect: ManifestEntry) -> None:
    if sink.size != expect.size:
        raise SyncFailed(f"{expect.path} from {url}: got {sink.size} bytes, manifest says "
                         f"{expect.size}; fix the manifest or the file")  # fmt: skip
    if sink.sha256.hexdigest() != expect.sha256:
        raise SyncFailed(
            f"{expect.path} from {url}: sha256 is {sink.sha256.hexdigest()}, manifest says "
            f"{expect.sha256}; the file is corrupt or the manifest is stale"
        )


def _too_big(url: str, size: int, limit: int) -> str:
    return f"{url}: more than {limit} bytes (saw {size}); the limit is max_total_bytes"


def _refusal(exc: BaseException) -> str | None:
    os_error: Any = getattr(exc, "os_error", None)
    cause: Any = exc.__cause__
    for err in (os_error, cause):
        if isinstance(err, AddressRefused):
            return str(err)
    return None
