"""The tensors of one scheduler step, each built on the model's device.

Sequences of different lengths share one KV cache through left padding: a sequence holding
``n`` cached tokens owns the last ``n`` columns of its mask row and its cache row, and the
columns before them are padding. These pure functions build a step's inputs and reshape the
batch (sequences joining or leaving) while keeping that layout.

Every tensor is created on ``device`` (the model's) or on the device of the tensors it is
combined with, never on the CPU by default: one CPU tensor beside CUDA ones fails the first
decode step on a GPU. ``tests/engine/test_batch.py`` builds every step on the ``meta`` device
to catch a tensor that forgets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class StepInputs:
    #: ``[batch, width]`` token ids; padding is id 0.
    ids: torch.Tensor
    #: ``[batch, cached + width]``: 1 where a real token's keys/values are (or will be) cached.
    mask: torch.Tensor
    #: ``[batch, width]`` position of each input token in its own sequence.
    positions: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ids, self.mask, self.positions


def prefill_inputs(prompts: Sequence[Sequence[int]], device: torch.device | str) -> StepInputs:
    """Left-padded prompts: the inputs that fill a fresh cache for these sequences."""
    width = max(len(p) for p in prompts)
    ids = [[0] * (width - len(p)) + list(p) for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    positions = [[0] * (width - len(p)) + list(range(len(p))) for p in prompts]
    return StepInputs(
        ids=torch.tensor(ids, dtype=torch.long, device=device),
        mask=torch.tensor(mask, dtype=torch.long, device=device),
        positions=torch.tensor(positions, dtype=torch.long, device=device),
    )


def decode_inputs(
    last_tokens: Sequence[int],
    positions: Sequence[int],
    mask: torch.Tensor,
    device: torch.device | str,
) -> StepInputs:
    """One new token per sequence; ``mask`` is the batch's running mask, grown by a column."""
    ones = torch.ones((len(last_tokens), 1), dtype=mask.dtype, device=device)
    return StepInputs(
        ids=torch.tensor([[t] for t in last_tokens], dtype=torch.long, device=device),
        mask=torch.cat([mask, ones], -1),
        positions=torch.tensor([[p] for p in positions], dtype=torch.long, device=device),
    )


def merge(
    old_layers: Sequence[Any], old_mask: torch.Tensor, new_layers: Sequence[Any], new_mask: Any
) -> torch.Tensor:
    """Append freshly prefilled rows below the batch's rows; returns the merged mask.

    The narrower side is left-padded to the wider one. ``*_layers`` are cache layers with
    ``keys``/``values`` tensors ``[batch, heads, seq, dim]``; the old ones are updated in place.
    """
    width = max(old_mask.shape[1], new_mask.shape[1])
    for old, new in zip(old_layers, new_layers, strict=True):
        old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], 0)
        old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)], 0)
    return torch.cat([_left_pad_mask(old_mask, width), _left_pad_mask(new_mask, width)])


def keep_rows(cache: Any, mask: torch.Tensor, keep: Sequence[int], longest: int) -> torch.Tensor:
    """Keep only rows ``keep`` of the cache and mask; returns the new mask.

    ``longest`` is the most tokens any kept sequence has cached: the columns before the last
    ``longest`` are padding for every kept row, so they are cut (they cost compute and hold
    nothing). The cache is updated in place.
    """
    index = torch.tensor(list(keep), dtype=torch.long, device=mask.device)
    cache.batch_select_indices(index)
    mask = mask[index]
    start = mask.shape[1] - longest
    if start > 0:
        mask = mask[:, start:]
        for layer in cache.layers:
            layer.keys = layer.keys[..., start:, :]
            layer.values = layer.values[..., start:, :]
    return mask


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, 0, width - t.shape[-2], 0))


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0))
