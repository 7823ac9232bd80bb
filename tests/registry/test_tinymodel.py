"""The tiny-model factory: catalog-exact config and tensors, deterministic per seed, loadable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open

from turnout.registry.architectures import Architecture, get_architecture
from turnout.registry.tinymodel import write_tiny_model

TinyModelFactory = Callable[..., Path]


def _arch() -> Architecture:
    arch = get_architecture("tiny-llama")
    assert arch is not None
    return arch


def test_config_matches_catalog(tiny_model: TinyModelFactory) -> None:
    config = json.loads((tiny_model() / "config.json").read_text())
    for name, value in _arch().config.items():
        assert config[name] == value, name
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_tensors_match_expected(tiny_model: TinyModelFactory) -> None:
    with safe_open(str(tiny_model() / "model.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert shapes == _arch().expected_tensors()
    assert dtypes == {"F32"}


def test_seeds_differ_and_repeat(tiny_model: TinyModelFactory, tmp_path: Path) -> None:
    again = write_tiny_model(tmp_path / "again", seed=0)
    first = (tiny_model(seed=0) / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == first
    assert (tiny_model(seed=1) / "model.safetensors").read_bytes() != first
    assert (again / "tokenizer.json").read_bytes() == (
        tiny_model(seed=0) / "tokenizer.json"
    ).read_bytes()


def test_tokenizer_and_chat_template(tiny_model: TinyModelFactory) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model()))
    assert len(tok) == _arch().config["vocab_size"]
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hello there"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token is not None and tok.bos_token is not None
    ids = tok("The quick brown fox")["input_ids"]
    assert tok.decode(ids) == "The quick brown fox"


def test_model_generates(tiny_model: TinyModelFactory) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(tiny_model())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    inputs = tok("Hello, how are you?", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert len(new) == 12
    # Random weights scaled so greedy decoding does not collapse onto a single token.
    assert len(set(new)) > 1


def test_unknown_or_non_llama_arch_rejected(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown architecture"):
        write_tiny_model(tmp_path, arch_id="nope")
    with pytest.raises(ValueError, match="llama"):
        write_tiny_model(tmp_path, arch_id="qwen-3-32b")
