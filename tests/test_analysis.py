"""Section-7 analysis on constructed cases with known answers: subspace similarity, effective
rank, amplification, the adapter-file reader and ``lorakit inspect``."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import lorakit
from lorakit.analysis import (amplification, energy_rank, entropy_effective_rank, factored_svd,
                              numerical_rank, random_similarity, read_adapter, similarity_grid,
                              singular_basis, subspace_similarity)
from lorakit.analysis.base import oriented_weight
from lorakit.cli import main
from tests import tiny


def _orthonormal(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]


def _rank_k(out: int, inp: int, values: list[float], seed: int = 0) -> torch.Tensor:
    """``U diag(values) V.T`` with random orthonormal U, V: singular values exactly ``values``."""
    k = len(values)
    return _orthonormal(out, k, seed) @ torch.diag(torch.tensor(values, dtype=torch.float64)) \
        @ _orthonormal(inp, k, seed + 1).T


# ---- subspace similarity ------------------------------------------------------------------
def test_identical_subspaces_have_similarity_one():
    u = _orthonormal(32, 8)
    for i in (1, 3, 8):
        assert subspace_similarity(u, u, i, i) == pytest.approx(1.0)
    # a rotation inside the same span leaves the full-span similarity at 1
    rotated = u @ _orthonormal(8, 8, seed=5)
    assert subspace_similarity(u, rotated, 8, 8) == pytest.approx(1.0)


def test_orthogonal_subspaces_have_similarity_zero():
    q = _orthonormal(32, 12)
    assert subspace_similarity(q[:, :4], q[:, 4:], 4, 8) == pytest.approx(0.0, abs=1e-12)


def test_nested_and_partial_overlap():
    q = _orthonormal(16, 4)
    # span(q[:, :2]) lies inside span(q): phi(i, j) = 1 whenever i <= 2 <= j
    assert subspace_similarity(q[:, :2], q, 2, 4) == pytest.approx(1.0)
    # a direction at 45 degrees: cos^2 = 0.5
    tilted = ((q[:, 0] + q[:, 1]) / math.sqrt(2))[:, None]
    assert subspace_similarity(q[:, :1], tilted, 1, 1) == pytest.approx(0.5)


def test_grid_matches_pointwise_definition():
    u1, u2 = _orthonormal(20, 5, 1), _orthonormal(20, 7, 2)
    grid = similarity_grid(u1, u2)
    assert grid.shape == (5, 7)
    for i in range(1, 6):
        for j in range(1, 8):
            assert grid[i - 1, j - 1] == pytest.approx(subspace_similarity(u1, u2, i, j))


def test_random_subspaces_match_the_stated_baseline():
    values = [subspace_similarity(_orthonormal(40, 2, s), _orthonormal(40, 5, 1000 + s), 2, 5)
              for s in range(300)]
    assert sum(values) / len(values) == pytest.approx(random_similarity(2, 5, 40), rel=0.1)


def test_singular_basis_orders_directions_by_strength():
    out_dirs, in_dirs = _orthonormal(10, 2, 3), _orthonormal(12, 2, 4)
    # strength 1 along (out_dirs[:, 0], in_dirs[:, 0]), strength 5 along the second pair
    m = out_dirs @ torch.diag(torch.tensor([1.0, 5.0], dtype=torch.float64)) @ in_dirs.T
    assert abs(float(singular_basis(m, side="out")[:, 0] @ out_dirs[:, 1])) == pytest.approx(1.0)
    assert abs(float(singular_basis(m, side="in")[:, 0] @ in_dirs[:, 1])) == pytest.approx(1.0)
    assert singular_basis(m, side="in").shape == (12, 10)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="same n"):
        subspace_similarity(_orthonormal(8, 2), _orthonormal(9, 2), 1, 1)
    with pytest.raises(ValueError, match="i <= 2"):
        subspace_similarity(_orthonormal(8, 2), _orthonormal(8, 2), 3, 1)


# ---- spectra and effective rank -------------------------------------------------------------
def test_factored_svd_is_the_svd_of_the_product():
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(30, 4, generator=g), torch.randn(4, 20, generator=g)
    u, s, v = factored_svd(b, a)
    product = b.double() @ a.double()
    assert torch.allclose(u @ torch.diag(s) @ v.T, product, atol=1e-10)
    assert torch.allclose(s, torch.linalg.svdvals(product)[:4], atol=1e-10)
    assert torch.allclose(u.T @ u, torch.eye(4, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_rank_k_update_has_effective_rank_k(k):
    s = torch.linalg.svdvals(_rank_k(40, 30, [2.0] * k))
    assert numerical_rank(s) == k
    assert entropy_effective_rank(s) == pytest.approx(k)
    # k equal directions: ceil(0.9 k) of them hold 90% of the energy
    assert energy_rank(s, 0.9) == math.ceil(0.9 * k)
    assert energy_rank(s, 1.0) == k


def test_dominated_spectrum_has_effective_rank_near_one():
    s = torch.linalg.svdvals(_rank_k(40, 30, [100.0, 1.0, 1.0, 1.0]))
    assert numerical_rank(s) == 4
    assert 1.0 < entropy_effective_rank(s) < 1.3
    assert energy_rank(s, 0.9) == 1


def test_zero_update_has_rank_zero():
    s = torch.zeros(8)
    assert (numerical_rank(s), entropy_effective_rank(s), energy_rank(s)) == (0, 0.0, 0)


# ---- amplification --------------------------------------------------------------------------
def test_amplification_of_a_known_case():
    w = torch.diag(torch.tensor([10.0, 0.5, 2.0, 1.0], dtype=torch.float64))
    e = torch.eye(4, dtype=torch.float64)
    # dW = 3 e2 e2^T: W's component along (e2, e2) is 0.5, so the factor is 3 / 0.5 = 6
    u, s, v = factored_svd(3.0 * e[:, 1:2], e[1:2, :])
    amp = amplification(w, u, s, v)
    assert (amp.delta_norm, amp.projection_norm, amp.factor) == pytest.approx((3.0, 0.5, 6.0))
    assert amp.weight_norm == pytest.approx(float(w.norm()))
    # the sign of a singular pair does not change the factor
    u, s, v = factored_svd(-3.0 * e[:, 1:2], e[1:2, :])
    assert amplification(w, u, s, v).factor == pytest.approx(6.0)
    # an update along W's strongest direction is not amplified: 3 / 10
    u, s, v = factored_svd(3.0 * e[:, 0:1], e[0:1, :])
    assert amplification(w, u, s, v).factor == pytest.approx(0.3)


def test_amplification_rejects_a_mismatched_weight():
    u, s, v = factored_svd(torch.ones(4, 1), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"\[out, in\] = \[4, 3\]"):
        amplification(torch.zeros(3, 4), u, s, v)


# ---- adapter files ----------------------------------------------------------------------------
READER_CASES = {
    "llama-linear-embedding": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"])),
    "gpt2-conv1d": ("gpt2", dict(r=2, lora_alpha=4, target_modules=["c_attn"], use_rslora=True)),
    "convnet": ("convnet", dict(r=2, target_modules=["conv1", "seq"])),
}


@pytest.mark.parametrize("case", list(READER_CASES))
def test_read_adapter_gives_the_update_a_merge_writes(case, tmp_path):
    kind, kw = READER_CASES[case]
    model = tiny.make(kind)
    lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=False, **kw))
    lorakit.save_adapter(model, tmp_path)
    _, layers = read_adapter(tmp_path)
    before = {layer.module: oriented_weight(model.get_submodule(layer.module).base_layer) for layer in layers}
    lorakit.merge(model)
    assert len(layers) == len(before) > 0
    for layer in layers:
        after = oriented_weight(model.get_submodule(layer.module).base_layer)
        left, right = layer.update_factors()
        assert torch.allclose(left @ right, after - before[layer.module], atol=1e-5), layer.module


def test_read_adapter_names_a_missing_factor(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny.make("llama")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]))
    lorakit.save_adapter(model, tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = {k: v for k, v in load_file(path).items() if "layers.1" not in k or "lora_B" not in k}
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"missing tensor .*layers\.1\.self_attn\.q_proj\.lora_B\.weight"):
        read_adapter(tmp_path)


# ---- lorakit inspect --------------------------------------------------------------------------
def _trained_like(model, r: int, seed: int, shared: torch.Tensor):
    """An adapter whose A rows all contain ``shared`` (a common top direction) plus noise."""
    model = copy.deepcopy(model)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "lora_A"):
                a = module.lora_A["default"].weight
                a.copy_(0.01 * torch.randn(a.shape, generator=g))
                a[0] += shared
    return model


def test_inspect_cli_reports_similarity_amplification_and_heatmap(tmp_path, capsys):
    torch.manual_seed(0)
    base = tiny.make("llama")
    base.save_pretrained(tmp_path / "base")
    shared = torch.randn(64)
    for r, seed in ((2, 1), (8, 2)):
        lorakit.save_adapter(_trained_like(base, r, seed, shared), tmp_path / f"r{r}")
    out = tmp_path / "report"
    code = main(["inspect", str(tmp_path / "r2"), "--vs", str(tmp_path / "r8"),
                 "--base", str(tmp_path / "base"), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "phi(1,1)" in printed and "amp" in printed and "mean q_proj (x2)" in printed
    report = json.loads((out / "inspect.json").read_text())
    rows = {row["module"]: row for row in report["layers"]}
    q0 = rows["model.layers.0.self_attn.q_proj"]
    assert q0["r"] == 2 and q0["alpha"] == 4 and q0["rank"] == 2
    assert q0["sim_top"] > 0.95  # both top directions are `shared`
    assert q0["sim_top_random"] == pytest.approx(1 / 64)
    # the amplification in the report is the one computed from the files directly
    _, layers = read_adapter(tmp_path / "r2")
    layer = next(x for x in layers if x.module == "model.layers.0.self_attn.q_proj")
    u, s, v = factored_svd(*layer.update_factors())
    weight = base.get_submodule(layer.module).weight
    assert q0["amplification"] == pytest.approx(amplification(weight, u, s, v).factor, rel=1e-6)
    assert (out / "subspace_similarity.png").stat().st_size > 1000
    assert len(report["mean_grids"]["all"]) == 2 and len(report["mean_grids"]["all"][0]) == 8


def test_inspect_cli_names_a_missing_adapter(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
