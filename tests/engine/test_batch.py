"""A step's tensors: their values on the CPU, and their device wherever the model is.

The ``meta`` device stands in for a GPU: a tensor built on the CPU by default cannot be combined
with meta tensors, exactly as it cannot with CUDA ones.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

from turnout.engine.batch import decode_inputs, keep_rows, merge, prefill_inputs


def _cache(rows: int, seq: int, device: str) -> DynamicCache:
    cache = DynamicCache()
    for layer in range(2):
        kv = torch.arange(rows * seq, dtype=torch.float32).reshape(rows, 1, seq, 1)
        kv = kv.to(device)
        cache.update(kv.clone(), kv.clone(), layer)
    return cache


def test_prefill_left_pads_and_numbers_positions() -> None:
    inputs = prefill_inputs([[5, 6, 7], [8]], "cpu")
    assert inputs.ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert inputs.mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert inputs.positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_decode_grows_the_mask_by_one_column() -> None:
    mask = torch.tensor([[1, 1, 1], [0, 0, 1]])
    inputs = decode_inputs([9, 4], [3, 1], mask, "cpu")
    assert inputs.ids.tolist() == [[9], [4]]
    assert inputs.positions.tolist() == [[3], [1]]
    assert inputs.mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]


def test_merge_right_aligns_both_sides() -> None:
    old, new = _cache(1, 2, "cpu"), _cache(1, 3, "cpu")
    mask = merge(old.layers, torch.tensor([[1, 1]]), new.layers, torch.tensor([[0, 1, 1]]))
    assert mask.tolist() == [[0, 1, 1], [0, 1, 1]]
    keys = old.layers[0].keys
    assert keys.shape == (2, 1, 3, 1)
    assert keys[0, 0, :, 0].tolist() == [0.0, 0.0, 1.0]  # padded on the left


def test_keep_rows_cuts_columns_that_are_padding_for_every_kept_row() -> None:
    cache = _cache(3, 4, "cpu")
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    kept = keep_rows(cache, mask, [1, 2], longest=2)
    assert kept.tolist() == [[1, 1], [0, 1]]
    assert cache.layers[0].keys.shape == (2, 1, 2, 1)
    assert cache.layers[0].keys[:, 0, :, 0].tolist() == [[6.0, 7.0], [10.0, 11.0]]


def test_every_step_tensor_is_on_the_models_device() -> None:
    device = torch.device("meta")
    prefill = prefill_inputs([[1, 2, 3], [4]], device)
    decode = decode_inputs([5, 6], [3, 1], prefill.mask, device)
    old, new = _cache(2, 4, "meta"), _cache(1, 2, "meta")
    merged = merge(old.layers, decode.mask, new.layers, prefill_inputs([[7, 8]], device).mask)
    kept = keep_rows(old, merged, [0, 2], longest=2)
    tensors = [*prefill.tensors(), *decode.tensors(), merged, kept]
    tensors += [t for layer in old.layers for t in (layer.keys, layer.values)]
    assert {t.device for t in tensors} == {device}


def test_a_mask_on_another_device_is_refused() -> None:
    # The batch's running mask lives on the model's device; a CPU one beside it is a bug.
    with pytest.raises(RuntimeError):
        decode_inputs([1], [1], torch.ones((1, 1), dtype=torch.long), torch.device("meta"))


def test_layers_need_only_keys_and_values() -> None:
    old = [SimpleNamespace(keys=torch.ones(1, 1, 1, 1), values=torch.ones(1, 1, 1, 1))]
    new = [SimpleNamespace(keys=torch.ones(1, 1, 2, 1), values=torch.ones(1, 1, 2, 1))]
    mask = merge(old, torch.ones(1, 1, dtype=torch.long), new, torch.ones(1, 2, dtype=torch.long))
    assert mask.tolist() == [[0, 1], [1, 1]]
