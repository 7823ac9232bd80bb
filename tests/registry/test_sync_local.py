"""file:// syncs end to end, plus the outcome of every failure: a message and no leftovers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.conftest import TinyModelFactory
from tests.registry.conftest import ModelFactory, assert_no_leftovers
from turnout.errors import BadRequest, SourceNotAllowed
from turnout.registry.architectures import Architecture
from turnout.registry.config import SyncConfig
from turnout.registry.sync import SyncFailed, SyncRequest, check_source_uri, sync_weights


def _sync(uri: str, arch: Architecture, config: SyncConfig, job: str = "org/tiny/1") -> object:
    return asyncio.run(sync_weights(SyncRequest(job, uri, arch), config))


def test_file_sync_is_stable(
    make_model: ModelFactory, arch: Architecture, config: SyncConfig
) -> None:
    model = make_model()
    (model / "README.md").write_text("not a model file")
    (model / "pytorch_model.bin").write_bytes(b"legacy")
    seen: list[tuple[int, int]] = []

    async def progress(done: int, total: int) -> None:
        seen.append((done, total))

    request = SyncRequest("org/tiny/1", f"file://{model}", arch)
    first = asyncio.run(sync_weights(request, config, progress))
    second = asyncio.run(sync_weights(SyncRequest("org/tiny/2", str(model), arch), config))
    assert first == second
    assert first.digest.startswith("sha256:") and first.path.name == first.digest[7:]
    assert sorted(p.name for p in first.path.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert first.file_count == 4
    assert first.total_bytes == sum(p.stat().st_size for p in first.path.iterdir())
    assert seen[-1] == (first.total_bytes, first.total_bytes)
    assert_no_leftovers(config.weights_dir, published=1)


def test_real_tiny_model_syncs(
    tiny_model: TinyModelFactory, arch: Architecture, tmp_path: Path
) -> None:
    model = tiny_model()
    config = SyncConfig(tmp_path / "weights", allowed_local_roots=(model.parent,))
    result = _sync(str(model), arch, config)
    assert isinstance(result, object)
    assert_no_leftovers(config.weights_dir, published=1)


def test_validation_failure_names_the_field(
    make_model: ModelFactory, arch: Architecture, config: SyncConfig
) -> None:
    model = make_model(config_overrides={"num_hidden_layers": 3})
    with pytest.raises(SyncFailed) as info:
        _sync(str(model), arch, config)
    assert "config.json: num_hidden_layers is 3, architecture tiny-llama needs 4" in str(info.value)
    assert_no_leftovers(config.weights_dir)


def test_outside_allowed_roots_is_refused(
    tmp_path: Path, arch: Architecture, config: SyncConfig
) -> None:
    from tests.registry.conftest import write_model

    outside = write_model(tmp_path / "elsewhere", arch)
    with pytest.raises(SourceNotAllowed, match="TURNOUT_ALLOWED_LOCAL_ROOTS"):
        check_source_uri(f"file://{outside}", config)
    with pytest.raises(SourceNotAllowed, match="outside the local directories"):
        check_source_uri(f"{config.allowed_local_roots[0]}/../elsewhere", config)
    with pytest.raises(SyncFailed, match="outside the local directories"):
        _sync(str(outside), arch, config)
    assert_no_leftovers(config.weights_dir)


def test_no_roots_means_no_local_sources(tmp_path: Path, config: SyncConfig) -> None:
    closed = SyncConfig(config.weights_dir, allowed_local_roots=())
    with pytest.raises(SourceNotAllowed, match="not allowed.*TURNOUT_ALLOWED_LOCAL_ROOTS"):
        check_source_uri(str(tmp_path), closed)
    with pytest.raises(BadRequest, match="absolute path"):
        check_source_uri("relative/dir", config)
    with pytest.raises(BadRequest, match="unsupported weight_uri"):
        check_source_uri("ftp://host/x", config)


def test_symlink_escape_is_refused(
    tmp_path: Path, make_model: ModelFactory, arch: Architecture, config: SyncConfig
) -> None:
    model = make_model()
    secret = tmp_path / "secret.json"
    secret.write_text('{"model_type": "llama"}')
    (model / "config.json").unlink()
    os.symlink(secret, model / "config.json")
    # Refused without saying where the link leads (no server paths to the tenant).
    with pytest.raises(SyncFailed, match="config.json in .* is outside the local directories") as e:
        _sync(str(model), arch, config)
    assert "secret" not in str(e.value)
    assert_no_leftovers(config.weights_dir)


def test_symlinked_directory_escape_is_refused(
    tmp_path: Path, arch: Architecture, config: SyncConfig
) -> None:
    from tests.registry.conftest import write_model

    outside = write_model(tmp_path / "elsewhere", arch)
    link = config.allowed_local_roots[0] / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, link)
    with pytest.raises(SourceNotAllowed, match="outside the local directories"):
        check_source_uri(str(link), config)


def test_missing_dir_fails_cleanly(arch: Architecture, config: SyncConfig) -> None:
    missing = config.allowed_local_roots[0] / "nope"
    with pytest.raises(SyncFailed, match="cannot read"):
        _sync(str(missing), arch, config)
    assert_no_leftovers(config.weights_dir)
