"""Fixtures for the sync engine: model dirs (good and corrupt), a weight store, local servers.

Model directories are written here from ``expected_tensors()`` rather than with
``write_tiny_model`` so that each test can bend exactly one thing (a shape, a dtype, a config
field) and so these tests do not depend on the tokenizer trainer. The servers (moto, a static
HTTP server) listen on 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from safetensors.torch import save_file

from turnout.registry.architectures import Architecture, get_architecture
from turnout.registry.config import SyncConfig

ModelFactory = Callable[..., Path]


@pytest.fixture
def arch() -> Architecture:
    found = get_architecture("tiny-llama")
    assert found is not None
    return found


def write_model(
    out: Path,
    arch: Architecture,
    *,
    seed: int = 0,
    config_overrides: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    shapes: dict[str, tuple[int, ...]] | None = None,
    dtype: torch.dtype = torch.float32,
    shards: int = 1,
) -> Path:
    """A small HF-layout model dir for ``arch``; the keyword arguments break one thing each."""
    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], **arch.config}
    config.update(config_overrides or {})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    (out / "tokenizer_config.json").write_text('{"model_max_length": 512}')
    gen = torch.Generator().manual_seed(seed)
    wanted = {**arch.expected_tensors(), **(shapes or {})}
    tensors = {
        name: torch.randn(shape, generator=gen).to(dtype)
        for name, shape in sorted(wanted.items())
        if name not in drop
    }
    if shards == 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return out
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, str(out / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return out


@pytest.fixture
def make_model(tmp_path: Path, arch: Architecture) -> ModelFactory:
    counter = iter(range(1000))

    def make(**kwargs: Any) -> Path:
        return write_model(tmp_path / "models" / f"m{next(counter)}", arch, **kwargs)

    return make


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    return tmp_path / "weights"


@pytest.fixture
def config(weights_dir: Path, tmp_path: Path) -> SyncConfig:
    return SyncConfig(
        weights_dir=weights_dir,
        allowed_local_roots=(tmp_path / "models",),
        allowed_hosts=("127.0.0.1",),
        max_retries=1,
        connect_timeout=2.0,
        read_timeout=5.0,
    )


def assert_no_leftovers(weights_dir: Path, *, published: int = 0) -> None:
    """Nothing staged, and exactly ``published`` published dirs."""
    staging = weights_dir / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    store = weights_dir / "sha256"
    assert len(list(store.iterdir()) if store.exists() else []) == published


# --- S3 (moto in server mode) -------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials, and no way for the credential chain to leave 127.0.0.1."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3(moto_endpoint: str, aws_env: None) -> Any:
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def s3_config(config: SyncConfig, moto_endpoint: str) -> SyncConfig:
    from dataclasses import replace

    return replace(config, s3_endpoint_url=moto_endpoint, s3_region="us-east-1")


_buckets = iter(range(10_000))


def upload_dir(s3: Any, model_dir: Path, prefix: str = "models/tiny") -> str:
    """Put every file of ``model_dir`` under a fresh bucket; return the s3:// URI."""
    bucket = f"weights-{next(_buckets)}"
    s3.create_bucket(Bucket=bucket)
    for path in sorted(model_dir.iterdir()):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


# --- HTTP ---------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1; yields (dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
