"""Dropout masks drawn as positions: exact Bernoulli(p) rate, independent elements, seeded."""

import pytest
import torch

from lorakit.fast.mask import draw_seed, drop_positions, keep_multiplier


def test_same_seed_same_positions_other_seed_other_positions():
    a = drop_positions(5000, 0.1, seed=42)
    assert a.dtype == torch.int64 and torch.equal(a, drop_positions(5000, 0.1, seed=42))
    assert not torch.equal(a, drop_positions(5000, 0.1, seed=43))
    assert bool((a[1:] > a[:-1]).all()) and int(a.min()) >= 0 and int(a.max()) < 5000


@pytest.mark.parametrize("p", [0.01, 0.05, 0.3, 0.9])
def test_drop_rate_is_p(p):
    n = 2_000_000
    rate = drop_positions(n, p, seed=1).numel() / n
    assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5


def test_elements_are_independent():
    """Neighbours are dropped together at rate p^2 (a geometric-gap bug would correlate them),
    and every column of a [rows, cols] view drops at rate p."""
    p, n = 0.2, 1_000_000
    drop = torch.zeros(n, dtype=torch.bool)
    drop[drop_positions(n, p, seed=3)] = True
    both = (drop[1:] & drop[:-1]).float().mean().item()
    assert abs(both - p * p) < 5 * (p * p / n) ** 0.5
    cols = drop.view(-1, 8).float().mean(0)
    assert (cols - p).abs().max() < 0.01


def test_keep_multiplier_zeroes_exactly_the_positions():
    pos = torch.tensor([0, 5, 11])
    keep = keep_multiplier(pos, (3, 4), torch.bfloat16)
    assert keep.shape == (3, 4) and keep.dtype == torch.bfloat16
    assert keep.flatten().nonzero().flatten().tolist() == [i for i in range(12) if i not in (0, 5, 11)]
    assert set(keep.flatten().tolist()) == {0.0, 1.0}


def test_invalid_p_is_refused():
    with pytest.raises(ValueError, match="p must be in"):
        drop_positions(10, 0.0, seed=0)


def test_draw_seed_follows_torch_manual_seed():
    torch.manual_seed(5)
    first = [draw_seed(), draw_seed()]
    torch.manual_seed(5)
    assert [draw_seed(), draw_seed()] == first and first[0] != first[1]
