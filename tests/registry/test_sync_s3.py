"""s3:// syncs against moto in server mode on 127.0.0.1, through boto3."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.registry.conftest import ModelFactory, assert_no_leftovers, upload_dir
from turnout.registry.architectures import Architecture
from turnout.registry.config import SyncConfig
from turnout.registry.sync import SyncFailed, SyncRequest, SyncResult, sync_weights
from turnout.registry.weightstore import WeightStore

pytestmark = pytest.mark.usefixtures("aws_env")


def _sync(uri: str, arch: Architecture, config: SyncConfig, job: str = "org/tiny/1") -> SyncResult:
    return asyncio.run(sync_weights(SyncRequest(job, uri, arch), config))


def test_s3_sync_matches_file_sync(
    s3: Any, make_model: ModelFactory, arch: Architecture, s3_config: SyncConfig
) -> None:
    model = make_model(shards=2)
    uri = upload_dir(s3, model)
    bucket = uri.split("/")[2]
    s3.put_object(Bucket=bucket, Key="models/tiny/README.md", Body=b"skip me")
    s3.put_object(Bucket=bucket, Key="models/tiny/sub/config.json", Body=b"skip me too")
    s3.put_object(Bucket=bucket, Key="models/tiny2/config.json", Body=b"another prefix")
    # Small parts so that every shard is fetched as many ranged GETs.
    config = replace(s3_config, part_size=256 * 1024, max_concurrency=4)
    from_s3 = _sync(uri, arch, config, job="org/tiny/1")
    from_file = _sync(str(model), arch, config, job="org/tiny/2")
    assert from_s3 == from_file
    assert from_s3.file_count == 6
    assert_no_leftovers(config.weights_dir, published=1)


def test_missing_bucket(s3: Any, arch: Architecture, s3_config: SyncConfig) -> None:
    with pytest.raises(SyncFailed, match="s3://no-such-bucket/m: the bucket does not exist"):
        _sync("s3://no-such-bucket/m", arch, s3_config)
    assert_no_leftovers(s3_config.weights_dir)


def test_missing_prefix(
    s3: Any, make_model: ModelFactory, arch: Architecture, s3_config: SyncConfig
) -> None:
    uri = upload_dir(s3, make_model())
    with pytest.raises(SyncFailed, match="found no objects under the prefix; check the weight_uri"):
        _sync(uri + "-typo", arch, s3_config)
    assert_no_leftovers(s3_config.weights_dir)


def test_invalid_model_in_s3_is_rejected(
    s3: Any, make_model: ModelFactory, arch: Architecture, s3_config: SyncConfig
) -> None:
    uri = upload_dir(s3, make_model(drop=("lm_head.weight",)))
    with pytest.raises(SyncFailed, match="missing tensors for architecture tiny-llama: lm_head"):
        _sync(uri, arch, s3_config)
    assert_no_leftovers(s3_config.weights_dir)


@pytest.fixture
def moto_auth(moto_endpoint: str, s3: Any) -> Iterator[dict[str, str]]:
    """Turn on moto's IAM checks; yield a key pair of a user with no S3 permission."""
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    user = f"no-perms-{id(iam)}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _set_auth(moto_endpoint, "0")
    try:
        yield {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        _set_auth(moto_endpoint, "inf")


def _set_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=count.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def test_wrong_credentials(
    s3: Any,
    make_model: ModelFactory,
    arch: Architecture,
    s3_config: SyncConfig,
    moto_auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri = "s3://weights-auth/models/tiny"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
    with pytest.raises(SyncFailed, match="access key id is not known"):
        _sync(uri, arch, s3_config)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_auth["id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(SyncFailed, match="secret key does not match"):
        _sync(uri, arch, s3_config)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_auth["secret"])
    with pytest.raises(SyncFailed, match="access denied; the server's credentials need"):
        _sync(uri, arch, s3_config)
    assert_no_leftovers(s3_config.weights_dir)


def test_object_truncated_during_sync(
    s3: Any, make_model: ModelFactory, arch: Architecture, s3_config: SyncConfig
) -> None:
    model = make_model()
    uri = upload_dir(s3, model)
    bucket = uri.split("/")[2]

    async def truncate_after_listing(done: int, total: int) -> None:
        # The first report comes after the listing and before any GET: replace the weights
        # with a shorter object, as an uploader overwriting them would.
        if done == 0:
            data = (model / "model.safetensors").read_bytes()
            s3.put_object(Bucket=bucket, Key="models/tiny/model.safetensors", Body=data[:1000])

    request = SyncRequest("org/tiny/1", uri, arch)
    with pytest.raises(SyncFailed) as info:
        asyncio.run(sync_weights(request, s3_config, truncate_after_listing))
    message = str(info.value)
    assert f"s3://{bucket}/models/tiny/model.safetensors: the object is 1000 bytes now" in message
    assert "truncated or replaced during the sync" in message
    assert_no_leftovers(s3_config.weights_dir)


def test_interrupted_download_resumes(
    s3: Any, make_model: ModelFactory, arch: Architecture, s3_config: SyncConfig
) -> None:
    model = make_model()
    uri = upload_dir(s3, model)
    config = replace(s3_config, part_size=32 * 1024, max_concurrency=1)
    request = SyncRequest("org/tiny/resume", uri, arch)
    reports: list[tuple[int, int]] = []

    async def first_run() -> None:
        task = asyncio.current_task()
        assert task is not None

        async def stop_once_started(done: int, total: int) -> None:
            if done > 0:
                task.cancel()  # what a worker shutting down does

        await sync_weights(request, config, stop_once_started)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(first_run())
    staging = WeightStore(config.weights_dir).staging_for(request.job_id)
    assert (staging.work / "model.safetensors.json").exists()
    assert not (config.weights_dir / "sha256").exists()

    async def record(done: int, total: int) -> None:
        reports.append((done, total))

    state = json.loads((staging.work / "config.json.json").read_text())
    assert state["complete"]  # small files finished before the cancel; they are not fetched again
    resumed = asyncio.run(sync_weights(request, config, record))
    assert reports[0][0] > 0  # the second run started from the parts the first one fetched
    assert reports[-1] == (resumed.total_bytes, resumed.total_bytes)
    assert resumed == _sync(str(model), arch, config, job="org/tiny/file")
    assert_no_leftovers(config.weights_dir, published=1)


def test_changed_object_restarts_cleanly(
    s3: Any, make_model: ModelFactory, arch: Architecture, s3_config: SyncConfig, tmp_path: Path
) -> None:
    """A resume whose object changed since (new ETag) fetches it again instead of mixing."""
    first, second = make_model(seed=1), make_model(seed=2)
    uri = upload_dir(s3, first)
    config = replace(s3_config, part_size=32 * 1024, max_concurrency=1)
    request = SyncRequest("org/tiny/changed", uri, arch)

    async def run_and_cancel() -> None:
        task = asyncio.current_task()
        assert task is not None

        async def stop(done: int, total: int) -> None:
            if done > 0:
                task.cancel()

        await sync_weights(request, config, stop)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run_and_cancel())
    bucket = uri.split("/")[2]
    for path in second.iterdir():
        s3.put_object(Bucket=bucket, Key=f"models/tiny/{path.name}", Body=path.read_bytes())
    result = asyncio.run(sync_weights(request, config))
    assert result == _sync(str(second), arch, config, job="org/tiny/file2")
