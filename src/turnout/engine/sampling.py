"""Choosing each sequence's next token from its logits: greedy, or sampled with its own RNG."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_new_tokens: int
    #: 0 means greedy decoding.
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    #: Token ids that end the sequence (the model's EOS ids), sent back before it ends.
    stop_token_ids: frozenset[int] = frozenset()


def choose_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generator_for: Callable[[int], torch.Generator],
) -> list[int]:
    """One token per row of ``logits``, read back from the device in one transfer.

    ``generator_for(row)`` is that row's sequence's generator (on the logits' device): a seeded
    sequence draws the same numbers whatever else is in the batch.
    """
    picks = logits.argmax(-1)
    for row, p in enumerate(params):
        if p.temperature > 0:
            picks[row : row + 1] = sample(logits[row], p, generator_for(row))
    return [int(t) for t in picks.tolist()]


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> torch.Tensor:
    probs = torch.softmax(logits / params.temperature, -1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)
