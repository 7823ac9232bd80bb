"""The weight store: content addressing, atomic publish, dedupe, no leftovers."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from tests.registry.conftest import assert_no_leftovers
from turnout.registry.weightstore import (
    FileEntry,
    StagingBusy,
    WeightStore,
    hash_model_dir,
    manifest_digest,
    safe_job_name,
)


def _stage(store: WeightStore, job_id: str, files: dict[str, bytes]) -> Path:
    with store.staging(job_id) as staging:
        for name, data in files.items():
            (staging.model / name).write_bytes(data)
        return store.publish(staging, hash_model_dir(staging.model))


def test_digest_is_sha256_of_sorted_manifest(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_bytes(b"bee")
    (tmp_path / "a.json").write_bytes(b"ay")
    manifest = hash_model_dir(tmp_path)
    lines = "".join(
        f"{name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\n"
        for name, data in [("a.json", b"ay"), ("b.json", b"bee")]
    )
    assert manifest.hexdigest == hashlib.sha256(lines.encode()).hexdigest()
    assert manifest.total_bytes == 5
    reordered = list(reversed(manifest.files))
    assert manifest_digest(reordered) == manifest.hexdigest


def test_publish_is_content_addressed_and_read_only(tmp_path: Path) -> None:
    store = WeightStore(tmp_path / "weights")
    path = _stage(store, "org/arch/1", {"config.json": b"{}"})
    assert path.parent == tmp_path / "weights" / "sha256"
    assert path.name == hash_model_dir(path).hexdigest
    assert (path / "config.json").read_bytes() == b"{}"
    assert not os.stat(path).st_mode & stat.S_IWUSR
    assert not os.stat(path / "config.json").st_mode & stat.S_IWUSR
    assert_no_leftovers(tmp_path / "weights", published=1)


def test_identical_content_is_stored_once(tmp_path: Path) -> None:
    store = WeightStore(tmp_path / "weights")
    first = _stage(store, "org/arch/1", {"config.json": b"{}"})
    second = _stage(store, "org/arch/2", {"config.json": b"{}"})
    third = _stage(store, "org/arch/3", {"config.json": b"{ }"})
    assert first == second != third
    assert_no_leftovers(tmp_path / "weights", published=2)


def test_discard_removes_staging(tmp_path: Path) -> None:
    store = WeightStore(tmp_path / "weights")
    with store.staging("org/arch/1") as staging:
        (staging.model / "x.safetensors").write_bytes(b"partial")
        (staging.work / "x.part").write_bytes(b"partial")
    store.discard("org/arch/1")
    store.discard("never-staged")
    assert_no_leftovers(tmp_path / "weights")


def test_staging_is_locked_per_job(tmp_path: Path) -> None:
    store = WeightStore(tmp_path / "weights")
    with store.staging("org/arch/1"), pytest.raises(StagingBusy):
        with store.staging("org/arch/1"):
            pass
    with store.staging("org/arch/1"):
        pass


def test_safe_job_names_are_distinct_and_flat() -> None:
    a, b = safe_job_name("org/arch/1"), safe_job_name("org_arch_1")
    assert a != b
    assert "/" not in a and ".." not in safe_job_name("../../etc")
    assert FileEntry("a", 1, "x") == FileEntry("a", 1, "x")
