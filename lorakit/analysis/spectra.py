"""Singular spectra of low-rank updates, and the effective-rank measures read from them.

``dW = B @ A`` (B ``[out, r]``, A ``[r, in]``) is never formed: its SVD comes from two thin
QR factorisations and the SVD of an ``r x r`` core, so a vocabulary-sized embedding update
costs ``O((out + in) r^2)``. Everything runs in float64; inputs of any dtype are accepted.

Effective rank (all three are computed from the singular values ``s``, largest first):

- ``numerical_rank``: the number of ``s_k > tol * s_1`` (the algebraic rank up to round-off;
  a rank-k update gives exactly k).
- ``entropy_effective_rank`` (Roy & Vetterli, 2007): ``exp(H(p))`` with ``p_k = s_k / sum(s)``
  and ``H`` the Shannon entropy. A real number in ``[1, rank]``; k equal singular values give
  exactly k, and a spectrum dominated by one direction gives close to 1.
- ``energy_rank``: the smallest m with ``sum(s[:m]**2) >= fraction * sum(s**2)`` (how many
  directions hold ``fraction`` of ``||dW||_F^2``; default 90%).
"""

from __future__ import annotations

import math

import torch


def factored_svd(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``b @ a`` without forming it: returns ``U [out, r], S [r], V [in, r]`` with
    ``b @ a == U @ diag(S) @ V.T`` and ``S`` in decreasing order (float64).

    b ``[out, r]``, a ``[r, in]``; conv factors are flattened to ``[out, r]`` / ``[r, in*k]``
    by the caller.
    """
    if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"factored_svd needs B [out, r] and A [r, in]; got B {tuple(b.shape)}, "
                         f"A {tuple(a.shape)}")
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    return qb @ u, s, qa @ vh.T


def singular_basis(m: torch.Tensor, side: str = "in") -> torch.Tensor:
    """Orthonormal singular directions of a matrix ``m [out, in]``, as columns ordered by
    decreasing singular value: ``side="in"`` gives the right singular vectors ``[in, k]``
    (the row space; the LoRA paper's choice for ``A``), ``side="out"`` the left ones
    ``[out, k]``, with ``k = min(out, in)``."""
    if m.dim() != 2:
        raise ValueError(f"singular_basis needs a matrix, got shape {tuple(m.shape)}")
    if side not in ("in", "out"):
        raise ValueError(f"side must be 'in' or 'out', got {side!r}")
    u, _, vh = torch.linalg.svd(m.double(), full_matrices=False)
    return vh.T if side == "in" else u


def numerical_rank(s: torch.Tensor, tol: float = 1e-6) -> int:
    """Number of singular values above ``tol`` times the largest (0 for a zero matrix)."""
    s = s.double()
    if s.numel() == 0 or float(s.max()) == 0.0:
        return 0
    return int((s > tol * s.max()).sum())


def entropy_effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(-sum p log p)``, ``p = s / sum(s)`` (0 for a zero
    matrix)."""
    s = s.double().clamp(min=0)
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def energy_rank(s: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest m such that the top m singular values hold ``fraction`` of ``sum(s**2)``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    energy = s.double().pow(2)
    total = float(energy.sum())
    if total == 0.0:
        return 0
    cumulative = energy.sort(descending=True).values.cumsum(0) / total
    # the tolerance keeps an exact 90% split (e.g. 9 of 10 equal values) from rounding up
    return int((cumulative < fraction - 1e-12).sum()) + 1
