"""RMSNorm as one autograd function that keeps the bf16 input instead of an fp32 copy.

Plain reference (Hugging Face's Llama/Mistral/Qwen RMSNorm):

    h = x.float()
    y = weight * (h * rsqrt(mean(h**2, -1) + eps)).to(x.dtype)

The reference's autograd keeps the fp32 copy of ``x`` (twice the bytes of ``x``) and runs about
ten elementwise kernels forward and backward. Here the forward pass is three passes (an fp32
norm reduction read straight from bf16, one multiply computed in fp32 and rounded once, the
weight multiply) and keeps ``x`` and the per-row ``rstd``; the backward pass is

    g  = dy * weight                        (fp32)
    dx = rstd * g - x * rstd^3 * mean(g * x, -1)
"""

from __future__ import annotations

import torch


class RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        d = x.shape[-1]
        x2 = x.reshape(-1, d)
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32 for bf16, fp64 stays
        sq = torch.linalg.vector_norm(x2, dim=-1, dtype=acc).pow_(2)
        rstd = sq.div_(d).add_(eps).rsqrt_()  # [N]
        y = torch.empty_like(x2)
        torch.mul(x2, rstd[:, None], out=y)  # fp32 product, rounded once to x's dtype
        y.mul_(weight)
        ctx.save_for_backward(x, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        d = x.shape[-1]
        xf = x.reshape(-1, d).to(rstd.dtype)  # may be x itself (fp64): never written to
        g = dy.reshape(-1, d).to(rstd.dtype) * weight.to(rstd.dtype)
        coef = (g * xf).sum(-1).mul_(rstd.pow(3)).div_(d)  # [N]
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (dy.reshape(-1, d).to(rstd.dtype) * (xf * rstd[:, None])).sum(0).to(weight.dtype)
        dx = g.mul_(rstd[:, None]).sub_(xf * coef[:, None])
        return dx.to(x.dtype).view(x.shape), grad_w, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x.float() * rsqrt(mean(x.float()**2, -1) + eps)).to(x.dtype)``."""
    return RMSNorm.apply(x, weight, eps)
