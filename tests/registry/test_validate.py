"""validate.find_problems: each kind of broken model directory is reported by name."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from tests.registry.conftest import ModelFactory
from turnout.registry.architectures import Architecture
from turnout.registry.validate import find_problems, is_model_file


def test_good_dir_passes(make_model: ModelFactory, arch: Architecture) -> None:
    assert find_problems(make_model(), arch) == []


def test_sharded_dir_with_index_passes(make_model: ModelFactory, arch: Architecture) -> None:
    assert find_problems(make_model(shards=3), arch) == []


def test_wrong_config_field(make_model: ModelFactory, arch: Architecture) -> None:
    problems = find_problems(make_model(config_overrides={"num_hidden_layers": 3}), arch)
    assert "config.json: num_hidden_layers is 3, architecture tiny-llama needs 4" in problems


def test_config_bool_is_not_int(make_model: ModelFactory, arch: Architecture) -> None:
    problems = find_problems(make_model(config_overrides={"tie_word_embeddings": 0}), arch)
    assert any("tie_word_embeddings is 0" in p for p in problems)


def test_missing_and_invalid_config(make_model: ModelFactory, arch: Architecture) -> None:
    model = make_model()
    (model / "config.json").write_text("{not json")
    assert any("config.json is not valid JSON" in p for p in find_problems(model, arch))
    (model / "config.json").unlink()
    assert any("config.json is missing" in p for p in find_problems(model, arch))


def test_missing_tensor(make_model: ModelFactory, arch: Architecture) -> None:
    problems = find_problems(make_model(drop=("model.layers.2.mlp.up_proj.weight",)), arch)
    assert problems == [
        "missing tensors for architecture tiny-llama: model.layers.2.mlp.up_proj.weight"
    ]


def test_unexpected_tensor(make_model: ModelFactory, arch: Architecture) -> None:
    problems = find_problems(make_model(shapes={"model.extra.weight": (2, 2)}), arch)
    assert problems == ["unexpected tensors for architecture tiny-llama: model.extra.weight"]


def test_wrong_shape(make_model: ModelFactory, arch: Architecture) -> None:
    model = make_model(shapes={"model.norm.weight": (64,)})
    assert find_problems(model, arch) == [
        "model.safetensors: tensor model.norm.weight has shape [64], "
        "architecture tiny-llama needs [128]"
    ]


def test_bad_dtype(make_model: ModelFactory, arch: Architecture) -> None:
    problems = find_problems(make_model(dtype=torch.float64), arch)
    assert problems
    assert all("is F64; allowed dtypes are BF16, F16, F32" in p for p in problems)


def test_half_precision_allowed(make_model: ModelFactory, arch: Architecture) -> None:
    assert find_problems(make_model(dtype=torch.bfloat16), arch) == []


def test_truncated_safetensors(make_model: ModelFactory, arch: Architecture) -> None:
    model = make_model()
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    (problem,) = find_problems(model, arch)
    assert problem.startswith("model.safetensors: truncated or corrupt: tensor ")


def test_header_length_past_eof(make_model: ModelFactory, arch: Architecture) -> None:
    model = make_model()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 10_000) + b"{}")
    (problem,) = find_problems(model, arch)
    assert "model.safetensors: truncated or corrupt: header length 10000" in problem


def test_header_not_json(make_model: ModelFactory, arch: Architecture) -> None:
    model = make_model()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{")
    (problem,) = find_problems(model, arch)
    assert problem.startswith("model.safetensors: corrupt: the header is not valid JSON")


def test_tiny_file(make_model: ModelFactory, arch: Architecture) -> None:
    model = make_model()
    (model / "model.safetensors").write_bytes(b"abc")
    (problem,) = find_problems(model, arch)
    assert "model.safetensors: truncated: 3 bytes" in problem


def test_index_with_missing_shard(make_model: ModelFactory, arch: Architecture) -> None:
    model = make_model(shards=2)
    (model / "model-00002-of-00002.safetensors").unlink()
    assert find_problems(model, arch) == [
        "model.safetensors.index.json references model-00002-of-00002.safetensors, "
        "which is missing; upload every shard"
    ]


def test_index_pointing_at_wrong_shard(make_model: ModelFactory, arch: Architecture) -> None:
    model = make_model(shards=2)
    index_path = model / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors"
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    problems = find_problems(model, arch)
    assert any("puts " in p and "but it is in model-00001" in p for p in problems)


def test_no_weights(tmp_path: Path, make_model: ModelFactory, arch: Architecture) -> None:
    model = make_model()
    (model / "model.safetensors").unlink()
    (problem,) = find_problems(model, arch)
    assert problem.startswith("no *.safetensors file found")


def test_is_model_file() -> None:
    assert is_model_file("model-00001-of-00002.safetensors")
    assert is_model_file("model.safetensors.index.json")
    assert is_model_file("tokenizer.model")
    assert not is_model_file("pytorch_model.bin")
    assert not is_model_file("../config.json")
    assert not is_model_file(".hidden.safetensors")
    assert not is_model_file("README.md")
