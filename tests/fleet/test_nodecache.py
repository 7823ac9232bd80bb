"""A node's weight cache against the real control plane: `turnout serve` on 127.0.0.1 serving
its weight store on /internal/v1, and ensure_local fetching from it into a node cache."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import TinyModelFactory
from tests.e2e.server import TurnoutServer
from turnout.registry.nodecache import FetchFailed, ensure_local
from turnout.registry.weightstore import WeightStore, hash_model_dir

TOKEN = "node-cache-test-token-0123456789abcdef"

Publish = Callable[[], str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutServer]:
    root = tmp_path_factory.mktemp("nodecache")
    server = TurnoutServer(root / "data", env={"TURNOUT_INTERNAL_TOKEN": TOKEN})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def publish(server: TurnoutServer, tiny_model: TinyModelFactory) -> Publish:
    """Publish a fresh version (the tiny model plus a file of its own) into the server's weight
    store, as a sync would; returns its hex digest."""
    store = WeightStore(server.data_dir / "weights")

    def make() -> str:
        job = uuid.uuid4().hex
        with store.staging(job) as staging:
            for path in tiny_model(seed=1).iterdir():
                shutil.copy(path, staging.model / path.name)
            (staging.model / "salt.bin").write_bytes(os.urandom(3 * 2**20 + 17))
            manifest = hash_model_dir(staging.model)
            store.publish(staging, manifest)
        return manifest.hexdigest

    return make


def stored(server: TurnoutServer, hexdigest: str) -> Path:
    return server.data_dir / "weights" / "sha256" / hexdigest


def fetches(server: TurnoutServer, hexdigest: str, name: str) -> int:
    """GETs of one file the server answered, from its access log."""
    return server.log_path.read_text().count(f"/internal/v1/weights/{hexdigest}/files/{name} ")


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_fetches_every_file_checked_with_progress(
    server: TurnoutServer, publish: Publish, tmp_path: Path
) -> None:
    hexdigest = publish()
    seen: list[tuple[int, int]] = []
    got = ensure_local(
        f"sha256:{hexdigest}", server.url, TOKEN, tmp_path, lambda d, t: seen.append((d, t))
    )
    assert got == tmp_path / hexdigest
    assert same_files(got, stored(server, hexdigest))
    total = sum(p.stat().st_size for p in got.iterdir())
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # Once there, it is served from the node: no second fetch.
    assert ensure_local(hexdigest, server.url, TOKEN, tmp_path) == got
    assert fetches(server, hexdigest, "salt.bin") == 1


def test_concurrent_fetches_of_one_digest_fetch_once(
    server: TurnoutServer, publish: Publish, tmp_path: Path
) -> None:
    hexdigest = publish()
    results: list[Path] = []
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            results.append(ensure_local(hexdigest, server.url, TOKEN, tmp_path))
        except BaseException as exc:  # the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert results == [tmp_path / hexdigest] * 4
    for path in stored(server, hexdigest).iterdir():
        assert fetches(server, hexdigest, path.name) == 1, path.name


def test_a_tampered_file_is_refused_and_nothing_is_served(
    server: TurnoutServer, publish: Publish, tmp_path: Path
) -> None:
    hexdigest = publish()
    salt = stored(server, hexdigest) / "salt.bin"
    original = salt.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF  # same size, one byte changed
    os.chmod(salt, 0o644)
    salt.write_bytes(bytes(tampered))
    with pytest.raises(FetchFailed, match=r"salt\.bin does not match its digest"):
        ensure_local(hexdigest, server.url, TOKEN, tmp_path)
    assert not (tmp_path / hexdigest).exists()
    # Restored at the source, the next try replaces the failed one's partial directory.
    salt.write_bytes(original)
    got = ensure_local(hexdigest, server.url, TOKEN, tmp_path)
    assert same_files(got, stored(server, hexdigest))
    assert not (tmp_path / f".{hexdigest}.partial").exists()


def test_a_manifest_that_does_not_match_the_digest_is_refused(
    server: TurnoutServer, publish: Publish, tmp_path: Path
) -> None:
    hexdigest = publish()
    store = WeightStore(server.data_dir / "weights")
    # The store's manifest now claims other content for this digest (a swapped file with
    # its own size and hash): the node must not believe it.
    other = store.manifest_path(publish())
    store.manifest_path(hexdigest).write_text(other.read_text())
    with pytest.raises(FetchFailed, match="does not match it"):
        ensure_local(hexdigest, server.url, TOKEN, tmp_path)
    assert not (tmp_path / hexdigest).exists()
    assert fetches(server, hexdigest, "salt.bin") == 0


def test_partial_leftovers_are_replaced(
    server: TurnoutServer, publish: Publish, tmp_path: Path
) -> None:
    hexdigest = publish()
    partial = tmp_path / f".{hexdigest}.partial"
    partial.mkdir()
    (partial / "salt.bin").write_bytes(b"half a file")
    (partial / "stray.bin").write_bytes(b"not in the manifest")
    got = ensure_local(hexdigest, server.url, TOKEN, tmp_path)
    assert same_files(got, stored(server, hexdigest))
    assert not partial.exists()


def test_a_damaged_cached_copy_is_fetched_again(
    server: TurnoutServer, publish: Publish, tmp_path: Path
) -> None:
    hexdigest = publish()
    got = ensure_local(hexdigest, server.url, TOKEN, tmp_path)
    with (got / "salt.bin").open("r+b") as fh:
        fh.truncate(100)  # a write the disk lost
    assert ensure_local(hexdigest, server.url, TOKEN, tmp_path) == got
    assert same_files(got, stored(server, hexdigest))
    assert fetches(server, hexdigest, "salt.bin") == 2


def test_a_wrong_token_or_an_unknown_digest_fails_with_the_reason(
    server: TurnoutServer, publish: Publish, tmp_path: Path
) -> None:
    hexdigest = publish()
    with pytest.raises(FetchFailed, match="401"):
        ensure_local(hexdigest, server.url, "not-the-token", tmp_path)
    with pytest.raises(FetchFailed, match="404"):
        ensure_local("0" * 64, server.url, TOKEN, tmp_path)
    with pytest.raises(FetchFailed, match="not a sha256 digest"):
        ensure_local("sha256:../../etc", server.url, TOKEN, tmp_path)
    assert not (tmp_path / hexdigest).exists()
