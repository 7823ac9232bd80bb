"""A parent process for the no-orphan tests: the test SIGKILLs it and watches its replica.

Usage: orphan_parent.py RUN_DIR [fake engine flags...]. Starts one replica of the fake engine
through a LocalPlacement, waits until it is READY, prints one JSON line {"pid", "address"},
then sleeps (bounded) until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from turnout.placement.base import EngineCommand, ReplicaSpec
from turnout.placement.local import LocalPlacement, LocalPlacementConfig
from turnout.states import ReplicaState

FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")


async def main(run_dir: Path, flags: list[str]) -> None:
    placement = LocalPlacement(LocalPlacementConfig(run_dir=run_dir))
    engine = EngineCommand(argv=("{python}", str(FAKE_ENGINE), "--port", "{port}", *flags))
    spec = ReplicaSpec("orphan", "ep", "dep", run_dir, "fake", engine=engine)
    handle = await placement.start(spec)
    for _ in range(200):
        status = await placement.probe(handle)
        if status.state is ReplicaState.READY:
            break
        await asyncio.sleep(0.1)
    print(json.dumps({"pid": status.handle.pid, "address": handle.address}), flush=True)
    await asyncio.sleep(120)  # the test kills us long before this


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
