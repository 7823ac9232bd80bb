"""Benchmark: s3:// weight sync vs a plain parallel boto3 download of the same objects.

Starts ``moto_server`` (a separate process, so the server does not share our GIL) on
127.0.0.1, uploads a valid ~540 MB ``smollm2-135m`` checkpoint (float32, 4 shards + index),
then times, alternating and best of ``--rounds``:

* ``boto3_default``: ``download_file`` per object with boto3's default TransferConfig;
* ``boto3_tuned``:   ``download_file`` per object, TransferConfig(16 MiB parts, 16 threads),
  objects in parallel — the "raw read throughput" baseline;
* ``turnout_sync``:  ``sync_weights`` end to end (list, ranged parallel GETs with resume
  sidecars, ETag/size checks, header validation, sha256 digest, fsync, atomic publish).

Writes ``bench/reports/sync.json`` and prints it. Run: ``PYTHONPATH=src .venv/bin/python
bench/sync.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import torch
from boto3.s3.transfer import TransferConfig
from safetensors.torch import save_file

from turnout.registry.architectures import Architecture, get_architecture
from turnout.registry.config import SyncConfig
from turnout.registry.sync import SyncRequest, sync_weights

BUCKET = "bench"
PREFIX = "smollm2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def write_checkpoint(out: Path, arch: Architecture, shards: int = 4) -> int:
    out.mkdir(parents=True)
    (out / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], **arch.config})
    )
    (out / "tokenizer.json").write_text("{}")
    gen = torch.Generator().manual_seed(0)
    names = sorted(arch.expected_tensors())
    weight_map: dict[str, str] = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: torch.rand(arch.expected_tensors()[n], generator=gen) for n in names[i::shards]}
        save_file(part, str(out / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sum(p.stat().st_size for p in out.iterdir())


def plain_download(s3: Any, keys: list[str], dest: Path, transfer: TransferConfig | None) -> None:
    dest.mkdir(parents=True)

    def one(key: str) -> None:
        s3.download_file(BUCKET, key, str(dest / key.rsplit("/", 1)[1]), Config=transfer)

    with ThreadPoolExecutor(len(keys)) as pool:
        list(pool.map(one, keys))


def remove_read_only(path: Path) -> None:
    for dirpath, _, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def run_sync(request: SyncRequest, config: SyncConfig) -> None:
    asyncio.run(sync_weights(request, config))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/reports/sync.json"))
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true"
    )
    arch = get_architecture("smollm2-135m")
    assert arch is not None
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = start_moto(port)
    work = Path(tempfile.mkdtemp(prefix="turnout-bench-"))
    try:
        total = write_checkpoint(work / "model", arch)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        keys = []
        for path in sorted((work / "model").iterdir()):
            keys.append(f"{PREFIX}/{path.name}")
            s3.upload_file(str(path), BUCKET, keys[-1])
        shutil.rmtree(work / "model")
        tuned = TransferConfig(multipart_chunksize=16 * 2**20, max_concurrency=16)
        config = SyncConfig(
            weights_dir=work / "weights", allowed_local_roots=(), s3_endpoint_url=endpoint,
            s3_region="us-east-1",
        )  # fmt: skip
        times: dict[str, list[float]] = {"boto3_default": [], "boto3_tuned": [], "turnout_sync": []}
        for r in range(args.rounds):
            times["boto3_default"].append(
                timed(partial(plain_download, s3, keys, work / f"d{r}", None))
            )
            times["boto3_tuned"].append(
                timed(partial(plain_download, s3, keys, work / f"t{r}", tuned))
            )
            request = SyncRequest(f"bench/{r}", f"s3://{BUCKET}/{PREFIX}", arch)
            times["turnout_sync"].append(timed(partial(run_sync, request, config)))
            # Published dirs are read-only and identical content would be deduplicated, so
            # every round starts from an empty store.
            for path in (work / "weights", work / f"d{r}", work / f"t{r}"):
                remove_read_only(path)
        report = report_of(times, total)
    finally:
        moto.terminate()
        moto.wait(10)
        remove_read_only(work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def report_of(times: dict[str, list[float]], total: int) -> dict[str, Any]:
    best = {name: min(values) for name, values in times.items()}
    mbps = {name: round(total / t / 1e6, 1) for name, t in best.items()}
    return {
        "bytes": total,
        "seconds_best": {k: round(v, 3) for k, v in best.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "MB_per_s": mbps,
        "ratio_sync_vs_tuned": round(mbps["turnout_sync"] / mbps["boto3_tuned"], 3),
        "ratio_sync_vs_default": round(mbps["turnout_sync"] / mbps["boto3_default"], 3),
        "machine": f"{os.cpu_count()} cores, moto_server on 127.0.0.1",
    }


if __name__ == "__main__":
    main()
