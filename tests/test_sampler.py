"""Sampling: the draw is fixed by (seed, position); filters cut what they should."""

from __future__ import annotations

import torch

from gpu_executor.sampler import RowSampling, sample, uniform


def row(seed: int, position: int, temperature=1.0, top_p=1.0, top_k=0) -> RowSampling:
    return RowSampling(temperature, top_p, top_k, seed, position)


def test_uniform_is_deterministic_and_spread():
    us = [uniform(7, p) for p in range(4000)]
    assert us == [uniform(7, p) for p in range(4000)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert abs(sum(us) / len(us) - 0.5) < 0.02
    assert uniform(7, 0) != uniform(8, 0)


def test_greedy_rows_take_the_argmax_and_batching_changes_nothing():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g)
    rows = [row(i, 10, temperature=0.0 if i % 2 else 0.8) for i in range(6)]
    both = sample(logits, rows)
    for i in range(6):
        assert sample(logits[i : i + 1], [rows[i]]) == [both[i]]
        if i % 2:
            assert both[i] == int(logits[i].argmax())


def test_top_k_and_top_p_cut_the_tail():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    drawn_k = {sample(logits, [row(s, 0, top_k=2)])[0] for s in range(300)}
    assert drawn_k == {0, 1}
    # softmax mass: 0.64, 0.23, 0.086, ... top_p=0.8 keeps the first two.
    drawn_p = {sample(logits, [row(s, 0, top_p=0.8)])[0] for s in range(300)}
    assert drawn_p == {0, 1}
    assert {sample(logits, [row(s, 0, top_p=0.01)])[0] for s in range(50)} == {0}


def test_frequencies_follow_the_softmax():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    n = 6000
    counts = torch.bincount(
        torch.tensor([sample(logits, [row(3, p)])[0] for p in range(n)]), minlength=4
    ).double()
    expected = logits[0].double().softmax(-1) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # p = 0.001 for 3 degrees of freedom
