"""Seeded dropout masks: the same seed gives the same mask, at the documented rate."""

import torch

from lorakit.fast.mask import draw_seed, dropped, effective_p


def test_same_seed_same_mask_other_seed_other_mask():
    a = dropped((64, 33), 0.1, seed=42)
    assert a.dtype == torch.bool and a.shape == (64, 33)
    assert torch.equal(a, dropped((64, 33), 0.1, seed=42))
    assert not torch.equal(a, dropped((64, 33), 0.1, seed=43))


def test_drop_rate_matches_effective_p():
    p = 0.05
    assert abs(effective_p(p) - p) < 1e-5
    mask = dropped((1000, 1000), p, seed=1)
    rate = mask.float().mean().item()
    assert abs(rate - effective_p(p)) < 5 * (p * (1 - p) / mask.numel()) ** 0.5


def test_mask_elements_are_independent_of_position():
    """No stripes: every column and every row drops at the same rate (lanes of one 64-bit draw
    are used for neighbouring elements)."""
    mask = dropped((4000, 8), 0.25, seed=3).float()
    assert (mask.mean(0) - 0.25).abs().max() < 0.03
    assert abs(mask[:, 0::4].mean() - mask[:, 1::4].mean()) < 0.02


def test_draw_seed_follows_torch_manual_seed():
    torch.manual_seed(5)
    first = [draw_seed(), draw_seed()]
    torch.manual_seed(5)
    assert [draw_seed(), draw_seed()] == first and first[0] != first[1]
