"""Per-layer analysis of an adapter: norms, effective ranks, similarity to another adapter and
amplification of the base weight. Pure functions over ``AdapterLayer`` records and tensors.
"""

from __future__ import annotations

import torch

from lorakit.analysis.amplification import amplification, random_projection_norm
from lorakit.analysis.factors import AdapterLayer
from lorakit.analysis.spectra import (energy_rank, entropy_effective_rank, factored_svd,
                                      numerical_rank, singular_basis)
from lorakit.analysis.subspace import random_similarity, similarity_grid

# what the subspace similarity compares: A's row space (the paper), or dW's input/output space
SUBJECTS = ("A", "dW-in", "dW-out")


def update_svd(layer: AdapterLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U [out, r], S [r], V [in, r]`` of the layer's ``dW = s B A`` (float64)."""
    return factored_svd(*layer.update_factors())


def basis(layer: AdapterLayer, subject: str = "A") -> torch.Tensor:
    """Orthonormal directions of ``subject`` (see ``SUBJECTS``), strongest first, ``[n, r]``."""
    if subject == "A":
        return singular_basis(layer.a_matrix(), side="in")
    if subject in ("dW-in", "dW-out"):
        u, _, v = update_svd(layer)
        return v if subject == "dW-in" else u
    raise ValueError(f"unknown subspace subject {subject!r}; known: {list(SUBJECTS)}")


def subject_dim(layer: AdapterLayer, subject: str) -> int:
    """Dimension of the space ``subject``'s directions live in."""
    return layer.lora_b.shape[0] if subject == "dW-out" else layer.a_matrix().shape[1]


def describe_layer(layer: AdapterLayer, weight: torch.Tensor | None = None) -> dict:
    """Rank, alpha, ``||dW||_F``, effective ranks and (with the oriented base ``weight``) the
    amplification factor and its random-direction baseline, for one layer."""
    u, s, v = update_svd(layer)
    row = {"module": layer.module, "kind": layer.kind, "r": layer.r, "alpha": layer.alpha,
           "scaling": layer.scaling, "dora": layer.dora, "delta_norm": float(s.norm()),
           "rank": numerical_rank(s), "entropy_rank": entropy_effective_rank(s),
           "energy_rank_90": energy_rank(s, 0.9)}
    if weight is not None:
        try:
            amp = amplification(weight, u, s, v)
        except ValueError as err:
            raise ValueError(f"{layer.module}: {err}") from None
        random_norm = random_projection_norm(weight, layer.r)
        row.update(weight_norm=amp.weight_norm, projection_norm=amp.projection_norm,
                   amplification=amp.factor, random_projection_norm=random_norm,
                   random_amplification=amp.delta_norm / random_norm if random_norm > 0 else float("inf"))
    return row


def compare_layers(layer: AdapterLayer, other: AdapterLayer, subject: str = "A") -> torch.Tensor:
    """``phi(i, j)`` grid ``[r, r_other]`` between the two layers' ``subject`` subspaces."""
    u1, u2 = basis(layer, subject), basis(other, subject)
    if u1.shape[0] != u2.shape[0]:
        raise ValueError(f"{layer.module}: the adapters' {subject} spaces differ in dimension "
                         f"({u1.shape[0]} vs {u2.shape[0]})")
    return similarity_grid(u1, u2, layer.r, other.r)


def inspect_layers(layers: list[AdapterLayer], others: list[AdapterLayer] | None = None,
                   weights: dict[str, torch.Tensor] | None = None,
                   subject: str = "A") -> tuple[list[dict], dict[str, torch.Tensor]]:
    """One ``describe_layer`` row per layer, plus (when ``others`` is given) the similarity
    grid per module both adapters adapt; each row then carries ``sim_top`` = phi(1, 1),
    ``sim_top_in_other`` = phi(1, r_other), ``sim_all`` = phi(r, r_other) and the
    random-subspace expectations of the first two (``sim_top_random``,
    ``sim_top_in_other_random``)."""
    by_name = {o.module: o for o in others or []}
    rows, grids = [], {}
    for layer in layers:
        row = describe_layer(layer, None if weights is None else weights.get(layer.module))
        if layer.module in by_name:
            grid = compare_layers(layer, by_name[layer.module], subject)
            grids[layer.module] = grid
            n = subject_dim(layer, subject)
            row.update(sim_top=float(grid[0, 0]), sim_top_in_other=float(grid[0, -1]),
                       sim_all=float(grid[-1, -1]), sim_top_random=random_similarity(1, 1, n),
                       sim_top_in_other_random=random_similarity(1, grid.shape[1], n))
        rows.append(row)
    return rows, grids


def mean_grids(grids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average similarity grids by module type (the last path component, e.g. ``q_proj``),
    cropped to the smallest grid of each type, plus ``"all"`` over every module."""
    groups: dict[str, list[torch.Tensor]] = {}
    for module, grid in grids.items():
        groups.setdefault(module.rsplit(".", 1)[-1], []).append(grid)
        groups.setdefault("all", []).append(grid)
    out = {}
    for key, items in groups.items():
        i = min(g.shape[0] for g in items)
        j = min(g.shape[1] for g in items)
        out[key] = torch.stack([g[:i, :j] for g in items]).mean(0)
    return out
