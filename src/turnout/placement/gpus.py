"""Which GPUs this machine has: the operator's list (``TURNOUT_GPUS=0,1,2,3``, also how tests
fake a GPU machine), else what NVML reports, else none."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def parse_gpu_ids(value: str) -> tuple[int, ...]:
    """``"0,1,3"`` → ``(0, 1, 3)``; refuses anything but distinct non-negative integers."""
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"TURNOUT_GPUS must be distinct GPU ids like 0,1,2,3, not {value!r}")
    return tuple(int(part) for part in ids)


def discover_gpu_ids() -> tuple[int, ...]:
    """The GPUs NVML sees (nvidia-ml-py); none when it is not installed or finds no driver."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.info("no NVIDIA driver found (%s): placing replicas without GPUs", exc)
        return ()
    try:
        return tuple(range(pynvml.nvmlDeviceGetCount()))
    finally:
        pynvml.nvmlShutdown()


def gpu_ids(configured: str | None) -> tuple[int, ...]:
    return parse_gpu_ids(configured) if configured is not None else discover_gpu_ids()
