"""https:// (archive and manifest) against a local http.server, and hf:// failing cleanly."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from tests.registry.conftest import ModelFactory, assert_no_leftovers
from turnout.errors import SourceNotAllowed
from turnout.registry.architectures import Architecture
from turnout.registry.config import SyncConfig
from turnout.registry.sources.web import AddressRefused, GuardedResolver
from turnout.registry.sync import (
    SyncFailed,
    SyncRequest,
    SyncResult,
    check_source_uri,
    sync_weights,
)

Served = tuple[Path, str]


def _sync(uri: str, arch: Architecture, config: SyncConfig, job: str = "org/tiny/1") -> SyncResult:
    return asyncio.run(sync_weights(SyncRequest(job, uri, arch), config))


def _tar(model: Path, out: Path, root: str = "tiny-llama") -> None:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(model, arcname=root)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_archive_matches_file_sync(
    http_root: Served, make_model: ModelFactory, arch: Architecture, config: SyncConfig
) -> None:
    root, base = http_root
    model = make_model()
    (model / "notes.txt").write_text("dropped")
    _tar(model, root / "tiny.tar.gz")
    from_web = _sync(f"{base}/tiny.tar.gz", arch, config)
    assert from_web == _sync(str(model), arch, config, job="org/tiny/2")
    assert_no_leftovers(config.weights_dir, published=1)


def test_manifest_with_relative_urls(
    http_root: Served, make_model: ModelFactory, arch: Architecture, config: SyncConfig
) -> None:
    root, base = http_root
    model = make_model()
    (root / "files").mkdir()
    entries = []
    for path in sorted(model.iterdir()):
        data = path.read_bytes()
        (root / "files" / path.name).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        entries.append(
            {"path": path.name, "url": f"files/{path.name}", "size": len(data), "sha256": sha}
        )
    (root / "manifest.json").write_text(json.dumps({"files": entries}))
    assert _sync(f"{base}/manifest.json", arch, config) == _sync(str(model), arch, config, "j2")
    assert_no_leftovers(config.weights_dir, published=1)


def test_manifest_sha_mismatch(
    http_root: Served, make_model: ModelFactory, arch: Architecture, config: SyncConfig
) -> None:
    root, base = http_root
    model = make_model()
    (root / "config.json").write_bytes((model / "config.json").read_bytes())
    size = (root / "config.json").stat().st_size
    files = [{"path": "config.json", "url": "config.json", "size": size, "sha256": "0" * 64}]
    (root / "m.json").write_text(json.dumps({"files": files}))
    with pytest.raises(SyncFailed, match=r"config.json from .*: sha256 is [0-9a-f]{64}, manifest"):
        _sync(f"{base}/m.json", arch, config)
    assert_no_leftovers(config.weights_dir)


def test_manifest_path_escape(http_root: Served, arch: Architecture, config: SyncConfig) -> None:
    root, base = http_root
    files = [{"path": "../../etc/passwd", "url": "x", "size": 1, "sha256": "0" * 64}]
    (root / "m.json").write_text(json.dumps({"files": files}))
    with pytest.raises(SyncFailed, match="'../../etc/passwd' escapes the model directory"):
        _sync(f"{base}/m.json", arch, config)
    assert_no_leftovers(config.weights_dir)


def _evil_tar(out: Path, member: tarfile.TarInfo, data: bytes = b"") -> None:
    with tarfile.open(out, "w") as tar:
        config = tarfile.TarInfo("config.json")
        config.size = 2
        tar.addfile(config, io.BytesIO(b"{}"))
        tar.addfile(member, io.BytesIO(data) if data else None)


@pytest.mark.parametrize(
    ("name", "kind", "link"),
    [
        ("../escape.json", tarfile.REGTYPE, ""),
        ("/abs/model.safetensors", tarfile.REGTYPE, ""),
        ("tokenizer.json", tarfile.SYMTYPE, "/etc/passwd"),
        ("tokenizer.json", tarfile.SYMTYPE, "../../outside"),
        ("tokenizer.json", tarfile.LNKTYPE, "../outside"),
        ("dev.safetensors", tarfile.CHRTYPE, ""),
    ],
)
def test_escaping_archive_is_refused(
    http_root: Served, arch: Architecture, config: SyncConfig, name: str, kind: bytes, link: str
) -> None:
    root, base = http_root
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    data = b"x" if kind == tarfile.REGTYPE else b""
    member.size = len(data)
    _evil_tar(root / "evil.tar", member, data)
    with pytest.raises(SyncFailed, match=f"archive member {name!r} is refused"):
        _sync(f"{base}/evil.tar", arch, config)
    assert_no_leftovers(config.weights_dir)


def test_over_size_limit(
    http_root: Served, make_model: ModelFactory, arch: Architecture, config: SyncConfig
) -> None:
    root, base = http_root
    _tar(make_model(), root / "tiny.tar.gz")
    small = replace(config, max_total_bytes=100_000)
    with pytest.raises(SyncFailed, match="more than 100000 bytes"):
        _sync(f"{base}/tiny.tar.gz", arch, small)
    assert_no_leftovers(config.weights_dir)


def test_not_an_archive(http_root: Served, arch: Architecture, config: SyncConfig) -> None:
    root, base = http_root
    (root / "x.tar").write_bytes(b"hello" * 200)
    with pytest.raises(SyncFailed, match="is not a readable tar archive"):
        _sync(f"{base}/x.tar", arch, config)
    with pytest.raises(SyncFailed, match="HTTP 404"):
        _sync(f"{base}/missing.tar", arch, config)
    assert_no_leftovers(config.weights_dir)


def test_unreachable_host(arch: Architecture, config: SyncConfig) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}/model.tar.gz"
    with pytest.raises(SyncFailed, match="could not be reached"):
        _sync(uri, arch, config)
    assert_no_leftovers(config.weights_dir)


@pytest.mark.parametrize(
    "uri",
    [
        "https://127.0.0.1/m.tar",
        "https://10.1.2.3/m.tar",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/m.tar",
        "https://[::ffff:192.168.0.1]/m.tar",
        "https://localhost/m.tar",
        "http://example.com/m.tar",
    ],
)
def test_private_address_needs_permission(uri: str, arch: Architecture, config: SyncConfig) -> None:
    closed = replace(config, allowed_hosts=())
    with pytest.raises(SourceNotAllowed, match="TURNOUT_ALLOWED_HOSTS"):
        check_source_uri(uri, closed)
    with pytest.raises(SyncFailed, match="TURNOUT_ALLOWED_HOSTS"):
        _sync(uri, arch, closed)
    assert_no_leftovers(config.weights_dir)


def test_resolver_refuses_names_of_private_addresses() -> None:
    async def resolve(allowed: tuple[str, ...]) -> object:
        return await GuardedResolver(allowed).resolve("localhost", 80)

    with pytest.raises(AddressRefused, match="localhost resolves to .*TURNOUT_ALLOWED_HOSTS"):
        asyncio.run(resolve(()))
    assert asyncio.run(resolve(("localhost",)))


def test_hub_unreachable_fails_fast(
    arch: Architecture, config: SyncConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    with pytest.raises(SyncFailed, match=f"hf://org/repo@main: .*{endpoint}"):
        _sync("hf://org/repo@main", arch, config)
    assert_no_leftovers(config.weights_dir)
