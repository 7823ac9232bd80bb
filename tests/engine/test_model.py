"""Loading a model directory: dtype by device, and what a later weight swap compares with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from turnout.engine.model import bf16_supported, load_model, serving_dtype


def test_dtype_follows_the_device() -> None:
    assert serving_dtype("cpu", bf16_supported=True) is torch.float32
    assert serving_dtype("cuda", bf16_supported=True) is torch.bfloat16
    assert serving_dtype("cuda:1", bf16_supported=False) is torch.float16
    assert not bf16_supported("cpu")


def test_load_records_device_dtype_and_config(tiny_model: Callable[..., Path]) -> None:
    loaded = load_model(tiny_model(seed=0))
    assert loaded.model.device == torch.device("cpu")
    assert next(loaded.model.parameters()).dtype is torch.float32
    assert loaded.model_dir == tiny_model(seed=0)
    assert loaded.config["num_hidden_layers"] == 4
    assert loaded.max_model_len == 512
