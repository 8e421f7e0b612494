"""The amplification factor of a low-rank update (the LoRA paper, section 7.3).

With ``U [out, r]`` and ``V [in, r]`` the top-r singular vectors of ``dW``, the base weight's
component in the update's own directions is ``U.T @ W @ V`` (``[r, r]``), and

    amplification = ||dW||_F / ||U.T @ W @ V||_F

A large factor means the update strongly amplifies directions that W only weakly expresses (the
paper reports about 21 for GPT-3 ``W_q`` at r=4). ``random_projection_norm`` gives the same
projection of W onto random orthonormal directions, the baseline the paper compares against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Amplification:
    delta_norm: float       # ||dW||_F
    projection_norm: float  # ||U.T @ W @ V||_F
    weight_norm: float      # ||W||_F
    factor: float           # delta_norm / projection_norm (inf when the projection is 0)


def amplification(weight: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> Amplification:
    """Amplification of ``dW = U diag(s) V.T`` relative to the base ``weight [out, in]``.

    ``u [out, r]``, ``s [r]``, ``v [in, r]`` as returned by ``spectra.factored_svd`` (pass the
    top-r slices to restrict to the top r directions; ``||dW||_F`` is always ``||s||``).
    """
    if weight.dim() != 2 or weight.shape != (u.shape[0], v.shape[0]):
        raise ValueError(f"base weight {tuple(weight.shape)} does not match the update's "
                         f"[out, in] = [{u.shape[0]}, {v.shape[0]}]")
    w = weight.detach().double()
    projection = float((u.detach().double().T @ w @ v.detach().double()).norm())
    delta = float(s.detach().double().norm())
    factor = delta / projection if projection > 0 else float("inf")
    return Amplification(delta, projection, float(w.norm()), factor)


def random_projection_norm(weight: torch.Tensor, r: int, seed: int = 0) -> float:
    """``||U.T @ W @ V||_F`` for random orthonormal ``U [out, r]``, ``V [in, r]`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    out_dim, in_dim = weight.shape
    u, _ = torch.linalg.qr(torch.randn(out_dim, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_dim, r, generator=g, dtype=torch.float64))
    return float((u.T @ weight.detach().double() @ v).norm())
