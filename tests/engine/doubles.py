"""Model doubles for scheduler and control tests (never used outside tests).

They sit on the ``meta`` device, a stand-in for a GPU: a CPU tensor beside meta ones fails, as
beside CUDA ones. They answer CPU logits (all equal, so greedy decoding picks token 0), so
sampling still has numbers to read.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

VOCAB = 16


class MetaModel:
    """Checks where its inputs live and that the mask covers the cache exactly."""

    device = torch.device("meta")

    def __init__(self) -> None:
        self.devices: set[torch.device] = set()
        self.steps = 0

    def __call__(self, **kw: Any) -> Any:
        ids, mask, positions, cache = (
            kw["input_ids"],
            kw["attention_mask"],
            kw["position_ids"],
            kw["cache"],
        )
        self.devices |= {ids.device, mask.device, positions.device}
        kv = torch.zeros((ids.shape[0], 1, ids.shape[1], 2), device=self.device)
        for layer in range(2):
            cache.update(kv, kv, layer)
        assert mask.shape == (ids.shape[0], cache.layers[0].keys.shape[-2])
        assert positions.shape == ids.shape
        self.steps += 1
        logits = torch.zeros((ids.shape[0], 1, VOCAB))
        return type("Out", (), {"logits": logits})()


class BlockingModel(MetaModel):
    """Each forward pass waits until the test releases it: a stalled step."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, **kw: Any) -> Any:
        self.entered.set()
        self.release.wait(60)
        return super().__call__(**kw)
