"""The math of ``lorakit.combine`` (adapter arithmetic), as pure tensor functions: combining
full updates ``dW_i = s_i * B_i @ A_i`` and factoring the result back into a low-rank pair. No
module here touches a model (``lorakit.combine`` does that).

Combination rules over updates ``d_i`` (any shape) with weights ``w_i`` (PEFT's definitions,
``peft.utils.merge_utils``):

    linear / svd       sum_i w_i d_i
    magnitude_prune    sum_i w_i keep_top(d_i, density)
    ties               prune by magnitude; elect the sign of sum_i keep_top(d_i) per entry; per
                       entry, average w_i * d_i over the adapters that agree with that sign
    dare_linear        sum_i w_i bernoulli_mask(d_i, density) / density
    dare_ties          the DARE mask and rescale, then TIES' sign election and disjoint mean
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


# ---- pruning and sign election ------------------------------------------------------------------
def magnitude_prune(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * numel)`` entries of largest magnitude; zero the rest."""
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype, device=t.device)
    mask[t.abs().reshape(-1).topk(k).indices] = 1
    return t * mask.view_as(t)


def random_prune(t: torch.Tensor, density: float, generator: torch.Generator | None = None,
                 rescale: bool = True) -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` (divided by ``density`` if ``rescale``,
    so the expectation is ``t``)."""
    keep = torch.bernoulli(torch.full_like(t, density), generator=generator)
    pruned = t * keep
    return pruned / density if rescale else pruned


def majority_sign_mask(stacked: torch.Tensor, method: str = "total") -> torch.Tensor:
    """``stacked [n, ...]``: True where ``stacked[i]`` has the elected sign of its entry.

    ``total``: the sign of the sum; ``frequency``: the sign most adapters have (ties -> +).
    """
    sign = stacked.sign()
    if method == "total":
        votes = stacked.sum(dim=0)
    elif method == "frequency":
        votes = sign.sum(dim=0)
    else:
        raise ValueError(f"majority_sign_method must be 'total' or 'frequency', got {method!r}")
    elected = torch.where(votes >= 0, 1.0, -1.0).to(stacked.dtype)
    return sign == elected


def disjoint_merge(weighted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per entry, the mean of ``weighted[i]`` over the adapters ``mask`` keeps (0 if none)."""
    kept = (weighted * mask).sum(dim=0)
    return kept / mask.sum(dim=0).clamp(min=1)


# ---- combination rules --------------------------------------------------------------------------
def _weighted(stacked: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    return stacked * w.view(-1, *([1] * (stacked.dim() - 1)))


def task_arithmetic(deltas: Sequence[torch.Tensor], weights: Sequence[float], **_) -> torch.Tensor:
    return _weighted(torch.stack(list(deltas)), weights).sum(dim=0)


def magnitude_prune_merge(deltas, weights, density: float, **_) -> torch.Tensor:
    return task_arithmetic([magnitude_prune(d, density) for d in deltas], weights)


def ties(deltas, weights, density: float, majority_sign_method: str = "total", **_) -> torch.Tensor:
    stacked = torch.stack([magnitude_prune(d, density) for d in deltas])
    mask = majority_sign_mask(stacked, majority_sign_method)
    return disjoint_merge(_weighted(stacked, weights), mask)


def dare_linear(deltas, weights, density: float, generator: torch.Generator | None = None, **_) -> torch.Tensor:
    return task_arithmetic([random_prune(d, density, generator) for d in deltas], weights)


def dare_ties(deltas, weights, density: float, majority_sign_method: str = "total",
              generator: torch.Generator | None = None, **_) -> torch.Tensor:
    stacked = torch.stack([random_prune(d, density, generator) for d in deltas])
    mask = majority_sign_mask(stacked, majority_sign_method)
    return disjoint_merge(_weighted(stacked, weights), mask)


# method -> (rule over dense updates, needs density)
RULES: dict[str, tuple[Callable[..., torch.Tensor], bool]] = {
    "linear": (task_arithmetic, False),
    "svd": (task_arithmetic, False),
    "magnitude_prune": (magnitude_prune_merge, True),
    "ties": (ties, True),
    "dare_linear": (dare_linear, True),
    "dare_ties": (dare_ties, True),
}


# ---- factoring back to rank k -------------------------------------------------------------------
def _truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int):
    """Balanced factors of the best rank-``rank`` part and the relative Frobenius error.

    Returns ``B [m, rank]``, ``A [rank, n]`` (zero-padded when fewer singular values exist) and
    ``||M - B@A||_F / ||M||_F`` (0 for a zero matrix).
    """
    total = s.pow(2).sum()
    kept = s[:rank]
    error = (total - kept.pow(2).sum()).clamp(min=0).sqrt() / total.sqrt() if total > 0 else s.new_zeros(())
    root = kept.sqrt()
    b = u[:, : kept.numel()] * root
    a = root[:, None] * vh[: kept.numel()]
    if kept.numel() < rank:
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - kept.numel())], dim=1)
        a = torch.cat([a, a.new_zeros(rank - kept.numel(), a.shape[1])], dim=0)
    return b, a, float(error)


def svd_factor(matrix: torch.Tensor, rank: int):
    """``(B [m, rank], A [rank, n], relative error)`` with ``B @ A`` the best rank-``rank``
    approximation of ``matrix [m, n]`` (fp32 SVD)."""
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    return _truncate(u, s, vh, rank)


def factored_svd(b: torch.Tensor, a: torch.Tensor, rank: int):
    """Like ``svd_factor(b @ a, rank)`` for ``b [m, R]``, ``a [R, n]``, without forming the
    ``m x n`` product: with ``b = Qb Rb`` and ``a.T = Qa Ra``, ``b @ a = Qb (Rb Ra^T) Qa^T`` and
    only the ``R x R`` core is decomposed. Exact (error 0) when ``rank >= R``.
    """
    qb, rb = torch.linalg.qr(b.float())
    qa, ra = torch.linalg.qr(a.float().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    return _truncate(qb @ u, s, vh @ qa.T, rank)
