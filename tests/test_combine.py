"""Adapter arithmetic: the pure rules in lorakit.combine_math, and lorakit.combine on tiny models
(linear with one adapter == that adapter, cat == the sum of the outputs, svd error falls with
rank, parity with PEFT's dW-space methods, PEFT's linear cross-term)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorakit
from lorakit.combine_math import (
    disjoint_merge,
    factored_svd,
    magnitude_prune,
    majority_sign_mask,
    random_prune,
    svd_factor,
    ties,
)
from tests.variants_support import load_base, logits, randomize_adapter, save_tiny_llama

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]
TOL = dict(rtol=1e-5, atol=1e-5)


# ---- pure math ----------------------------------------------------------------------------------
def test_magnitude_prune_keeps_the_largest_entries():
    t = torch.tensor([[0.1, -3.0, 0.5], [2.0, -0.2, 0.0]])
    assert torch.equal(magnitude_prune(t, 0.5), torch.tensor([[0.0, -3.0, 0.5], [2.0, 0.0, 0.0]]))


def test_random_prune_density_and_unbiased_rescale():
    t = torch.ones(200, 200)
    out = random_prune(t, 0.3, torch.Generator().manual_seed(0))
    assert abs((out != 0).float().mean().item() - 0.3) < 0.01
    assert abs(out.mean().item() - 1.0) < 0.03
    again = random_prune(t, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_ties_elects_sign_and_averages_agreeing_entries():
    a = torch.tensor([1.0, -2.0, 3.0])
    b = torch.tensor([-3.0, -1.0, 1.0])
    # total sign: [-, -, +]; entry 0 keeps b only, entry 1 both, entry 2 both
    got = ties([a, b], [1.0, 1.0], density=1.0)
    torch.testing.assert_close(got, torch.tensor([-3.0, -1.5, 2.0]))
    freq = majority_sign_mask(torch.stack([a, b]), "frequency")
    assert freq.tolist() == [[True, True, True], [False, True, True]]  # a 1:1 tie elects +
    assert disjoint_merge(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool)).abs().sum() == 0


def test_factored_svd_equals_dense_svd_and_is_exact_at_full_rank():
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(30, 6, generator=g), torch.randn(6, 20, generator=g)
    for rank in (2, 4):
        fb, fa, ferr = factored_svd(b, a, rank)
        db, da, derr = svd_factor(b @ a, rank)
        torch.testing.assert_close(fb @ fa, db @ da, rtol=1e-4, atol=1e-4)
        assert abs(ferr - derr) < 1e-4
    fb, fa, err = factored_svd(b, a, 8)  # padded beyond the rank of b @ a
    assert fb.shape == (30, 8) and err < 1e-6
    torch.testing.assert_close(fb @ fa, b @ a, rtol=1e-4, atol=1e-4)


# ---- combine on a model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _two_adapters(base_dir, dora=False):
    model = load_base(base_dir)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                  init_lora_weights=False), "a")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=3, target_modules=TARGETS[:2] + ["o_proj"],
                                                  init_lora_weights=False, use_dora=dora), "b")
    return model


def _out(model, names):
    lorakit.set_adapter(model, names)
    return logits(model)


def _update(model, names):
    """Per-layer output change of ``names`` for a fixed hidden input (a linear quantity)."""
    lorakit.set_adapter(model, names)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        q = model.model.layers[0].self_attn.q_proj
        return q(x) - q.base_layer(x)


def test_linear_with_one_adapter_equals_it(base_dir):
    model = _two_adapters(base_dir)
    report = lorakit.combine(model, ["a"], [1.0], method="linear", name="only_a")
    assert report.rank == 4 and report.max_error < 1e-5
    torch.testing.assert_close(_out(model, "only_a"), _out(model, "a"), **TOL)


def test_cat_equals_weighted_sum_of_outputs(base_dir):
    model = _two_adapters(base_dir)
    lorakit.combine(model, ["a", "b"], method="cat", name="ab")
    torch.testing.assert_close(_out(model, "ab"), _out(model, ["a", "b"]), rtol=1e-6, atol=1e-6)
    lorakit.combine(model, ["a", "b"], [0.7, -0.3], method="cat", name="ab73")
    want = 0.7 * _update(model, "a") - 0.3 * _update(model, "b")
    torch.testing.assert_close(_update(model, "ab73"), want, rtol=1e-6, atol=1e-6)
    assert lorakit.adapter_configs(model)["ab73"].r == 6


def test_linear_is_exact_weighted_sum_and_peft_linear_has_cross_terms(base_dir, tmp_path):
    model = _two_adapters(base_dir)
    lorakit.combine(model, ["a", "b"], [0.7, 0.3], method="linear", name="lin")
    want = 0.7 * _update(model, "a") + 0.3 * _update(model, "b")
    torch.testing.assert_close(_update(model, "lin"), want, **TOL)
    # PEFT's linear needs equal ranks and mixes factors: (sum sqrt(w s) B_i)(sum sqrt(w s) A_i).
    same_rank = load_base(base_dir)
    for i, n in enumerate("ab"):
        lorakit.add_adapter(same_rank, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                          init_lora_weights=False), n)
        randomize_adapter(same_rank, seed=i)
        lorakit.save_adapter(same_rank, tmp_path / n, name=n)
    theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "a", adapter_name="a")
    theirs.load_adapter(tmp_path / "b", adapter_name="b")
    theirs.add_weighted_adapter(["a", "b"], [0.7, 0.3], "peft_lin", combination_type="linear")
    lorakit.combine(same_rank, ["a", "b"], [0.7, 0.3], method="linear", name="lin")
    q_ours = same_rank.model.layers[0].self_attn.q_proj
    q_theirs = theirs.base_model.model.model.layers[0].self_attn.q_proj
    exact = 0.7 * q_ours.plain_delta_weight("a") + 0.3 * q_ours.plain_delta_weight("b")
    torch.testing.assert_close(q_ours.plain_delta_weight("lin"), exact, **TOL)
    cross_term_error = (q_theirs.get_delta_weight("peft_lin") - exact).norm() / exact.norm()
    assert cross_term_error > 0.1


def test_svd_error_decreases_with_rank(base_dir):
    model = _two_adapters(base_dir)
    errors = [lorakit.combine(model, ["a", "b"], [0.5, 0.5], method="svd", name=f"s{k}", rank=k).max_error
              for k in (1, 2, 4, 6)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[0] > 0.1 and errors[-1] < 1e-5
    assert lorakit.combine(model, ["a", "b"], method="svd", name="default_rank").rank == 4


@pytest.mark.parametrize("ours, theirs, density", [("svd", "svd", None), ("ties", "ties_svd", 0.5),
                                                   ("magnitude_prune", "magnitude_prune_svd", 0.4)])
def test_dense_methods_match_peft_svd_variants(base_dir, tmp_path, ours, theirs, density):
    model = _two_adapters(base_dir)
    for n in "ab":
        lorakit.save_adapter(model, tmp_path / n, name=n)
    peft_model = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "a", adapter_name="a")
    peft_model.load_adapter(tmp_path / "b", adapter_name="b")
    peft_model.add_weighted_adapter(["a", "b"], [0.6, 0.9], "mix", combination_type=theirs, density=density,
                                    svd_rank=3)
    peft_model.set_adapter("mix")
    lorakit.combine(model, ["a", "b"], [0.6, 0.9], method=ours, name="mix", density=density, rank=3)
    torch.testing.assert_close(_out(model, "mix"), logits(peft_model), rtol=1e-4, atol=1e-4)


def test_dare_is_reproducible_by_seed(base_dir):
    model = _two_adapters(base_dir)
    for name, seed in (("d0", 0), ("d0_again", 0), ("d1", 1)):
        lorakit.combine(model, ["a", "b"], method="dare_ties", name=name, density=0.5, rank=6, seed=seed)
    torch.testing.assert_close(_out(model, "d0"), _out(model, "d0_again"), rtol=0, atol=0)
    assert not torch.allclose(_out(model, "d0"), _out(model, "d1"))
    lorakit.combine(model, ["a"], method="dare_linear", name="dl", density=1.0, rank=4)
    torch.testing.assert_close(_out(model, "dl"), _out(model, "a"), **TOL)  # density 1 keeps everything


def test_dora_adapter_combines_through_its_dense_update(base_dir):
    model = _two_adapters(base_dir, dora=True)
    report = lorakit.combine(model, ["b"], method="linear", name="b_as_lora", rank=64)
    assert report.max_error < 1e-5
    torch.testing.assert_close(_out(model, "b_as_lora"), _out(model, "b"), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cat stacks LoRA factors"):
        lorakit.combine(model, ["a", "b"], method="cat", name="nope")


def test_combined_adapter_saves_and_loads_in_peft(base_dir, tmp_path):
    model = _two_adapters(base_dir)
    lorakit.combine(model, ["a", "b"], [0.7, 0.3], method="linear", name="lin")
    want = _out(model, "lin")
    lorakit.save_adapter(model, tmp_path / "lin", name="lin")
    theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "lin").eval()
    torch.testing.assert_close(logits(theirs), want, **TOL)


def test_conv_and_conv1d_layers_combine_in_the_right_orientation():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(0, -1))
    gpt = nn.Sequential(Conv1D(6, 5))
    for m, t in ((model, ["0"]), (gpt, ["0"])):
        lorakit.add_adapter(m, lorakit.LoraConfig(r=2, target_modules=t, init_lora_weights=False), "a")
        lorakit.combine(m, ["a"], [0.5], method="linear", name="halved")
    x, y = torch.randn(1, 3, 5, 5), torch.randn(2, 5)
    for m, inp in ((model, x), (gpt, y)):
        with torch.no_grad():
            lorakit.set_adapter(m, "a")
            full = m(inp)
            lorakit.set_adapter(m, "halved")
            half = m(inp)
            with lorakit.disabled(m):
                base = m(inp)
        torch.testing.assert_close(half - base, 0.5 * (full - base), **TOL)


def test_bad_requests_are_refused(base_dir):
    model = _two_adapters(base_dir)
    with pytest.raises(ValueError, match="unknown combine method"):
        lorakit.combine(model, ["a"], method="mean")
    with pytest.raises(ValueError, match="needs density"):
        lorakit.combine(model, ["a", "b"], method="ties")
    with pytest.raises(ValueError, match="cat keeps every factor"):
        lorakit.combine(model, ["a", "b"], method="cat", rank=2)
    with pytest.raises(KeyError, match="no adapter 'c'"):
        lorakit.combine(model, ["a", "c"])
    lorakit.merge(model, ["a"])
    with pytest.raises(ValueError, match="unmerge adapters"):
        lorakit.combine(model, ["a", "b"])
