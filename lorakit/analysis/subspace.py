"""Normalised subspace similarity (the LoRA paper, section 7.2).

For orthonormal bases ``U1 [n, k1]`` and ``U2 [n, k2]`` (columns ordered by decreasing singular
value, see ``spectra.singular_basis``), the similarity of their top-i and top-j directions is

    phi(i, j) = ||U1[:, :i].T @ U2[:, :j]||_F^2 / min(i, j)          in [0, 1]

1 means the smaller subspace lies inside the larger, 0 means they are orthogonal. Two random
subspaces of dimensions i and j in R^n give ``max(i, j) / n`` in expectation
(``random_similarity``), the baseline any measured value should be read against.
"""

from __future__ import annotations

import torch


def _check_bases(u1: torch.Tensor, u2: torch.Tensor) -> None:
    if u1.dim() != 2 or u2.dim() != 2 or u1.shape[0] != u2.shape[0]:
        raise ValueError(f"subspace bases must be [n, k] with the same n; got {tuple(u1.shape)} "
                         f"and {tuple(u2.shape)}")


def subspace_similarity(u1: torch.Tensor, u2: torch.Tensor, i: int, j: int) -> float:
    """``phi(i, j)`` between the first ``i`` columns of ``u1`` and the first ``j`` of ``u2``."""
    _check_bases(u1, u2)
    if not (1 <= i <= u1.shape[1] and 1 <= j <= u2.shape[1]):
        raise ValueError(f"need 1 <= i <= {u1.shape[1]} and 1 <= j <= {u2.shape[1]}; got i={i}, j={j}")
    overlap = u1[:, :i].double().T @ u2[:, :j].double()
    return float(overlap.pow(2).sum()) / min(i, j)


def similarity_grid(u1: torch.Tensor, u2: torch.Tensor, max_i: int | None = None,
                    max_j: int | None = None) -> torch.Tensor:
    """``grid[i-1, j-1] = phi(i, j)`` for all ``1 <= i <= max_i``, ``1 <= j <= max_j``
    (default: every column), float64 ``[max_i, max_j]``; one matmul plus 2-D prefix sums."""
    _check_bases(u1, u2)
    max_i = u1.shape[1] if max_i is None else min(max_i, u1.shape[1])
    max_j = u2.shape[1] if max_j is None else min(max_j, u2.shape[1])
    squared = (u1[:, :max_i].double().T @ u2[:, :max_j].double()).pow(2)
    prefix = squared.cumsum(0).cumsum(1)
    i = torch.arange(1, max_i + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, max_j + 1, dtype=torch.float64)[None, :]
    return prefix / torch.minimum(i, j)


def random_similarity(i: int, j: int, n: int) -> float:
    """Expected ``phi(i, j)`` between uniformly random i- and j-dimensional subspaces of R^n."""
    return max(i, j) / n
