"""Token choice: greedy rows, seeded rows that repeat, and nucleus truncation."""

from __future__ import annotations

import torch

from turnout.engine.sampling import SamplingParams, choose_tokens, sample

GREEDY = SamplingParams(max_new_tokens=1, temperature=0)


def test_greedy_rows_take_the_argmax_and_never_touch_a_generator() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])

    def no_generator(row: int) -> torch.Generator:
        raise AssertionError("greedy rows draw no random numbers")

    assert choose_tokens(logits, [GREEDY, GREEDY], no_generator) == [1, 0]


def test_a_seeded_row_draws_the_same_tokens_whatever_its_neighbours() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    params = SamplingParams(max_new_tokens=1, temperature=1.0, seed=7)

    def draw(rows: list[SamplingParams], mine: int) -> list[int]:
        gens = [torch.Generator().manual_seed(7 if r == mine else 100 + r) for r in range(4)]
        return [choose_tokens(logits, rows, gens.__getitem__)[mine] for _ in range(5)]

    alone = draw([GREEDY, GREEDY, GREEDY, params], mine=3)
    busy = [SamplingParams(max_new_tokens=1, temperature=1.3, seed=r) for r in range(3)]
    assert draw([*busy, params], mine=3) == alone


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    params = SamplingParams(max_new_tokens=1, temperature=1.0, top_p=0.8)
    gen = torch.Generator().manual_seed(0)
    assert {int(sample(logits, params, gen)) for _ in range(200)} == {0, 1}
