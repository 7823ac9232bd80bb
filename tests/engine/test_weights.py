"""Staging another directory's weights: refusals leave nothing changed; a copy is a fresh load."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from turnout.engine.model import load_model
from turnout.engine.weights import WeightsRejected, config_differences, copy_weights, load_candidate

PROMPT = torch.tensor([[3, 14, 15, 92, 65]])


def _logits(model: object) -> torch.Tensor:
    with torch.inference_mode():
        out = model(input_ids=PROMPT)  # type: ignore[operator]
    logits: torch.Tensor = out.logits
    return logits


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_config_differences_ignore_file_metadata() -> None:
    old = {"hidden_size": 64, "transformers_version": "5.0", "eos_token_id": 2}
    new = {"hidden_size": 64, "transformers_version": "5.1", "eos_token_id": 3}
    assert config_differences(old, new) == []
    assert config_differences(old, {**new, "hidden_size": 128, "rope_theta": 1e4}) == [
        "hidden_size: 64 != 128",
        "rope_theta: None != 10000.0",
    ]


def test_candidate_copied_in_is_a_fresh_load_of_its_directory(
    tiny_model: Callable[..., Path],
) -> None:
    serving = load_model(tiny_model(seed=0))
    before = _logits(serving.model)
    candidate = load_candidate(tiny_model(seed=1), serving)
    assert torch.equal(_logits(serving.model), before)  # staging touches nothing
    copy_weights(serving.model, candidate.source)
    fresh = load_model(tiny_model(seed=1))
    assert torch.equal(_logits(serving.model), _logits(fresh.model))
    assert candidate.loaded.model is serving.model
    assert candidate.loaded.model_dir == tiny_model(seed=1)
    assert candidate.loaded.fingerprint == fresh.fingerprint != serving.fingerprint
    assert candidate.loaded.eos_token_ids == fresh.eos_token_ids


def test_other_shape_is_refused_naming_the_field(
    tiny_model: Callable[..., Path], tmp_path: Path
) -> None:
    serving = load_model(tiny_model(seed=0))
    other = _copy(tiny_model(seed=1), tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(WeightsRejected, match="num_hidden_layers: 4 != 2"):
        load_candidate(other, serving)


def test_missing_directory_and_incomplete_checkpoints_are_refused(
    tiny_model: Callable[..., Path], tmp_path: Path
) -> None:
    serving = load_model(tiny_model(seed=0))
    with pytest.raises(WeightsRejected, match="not a directory"):
        load_candidate(tmp_path / "nowhere", serving)
    corrupt = _copy(tiny_model(seed=1), tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsRejected, match="could not be loaded"):
        load_candidate(corrupt, serving)
    partial = _copy(tiny_model(seed=1), tmp_path / "partial")
    tensors = load_file(str(partial / "model.safetensors"))
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsRejected, match="up_proj"):
        load_candidate(partial, serving)
