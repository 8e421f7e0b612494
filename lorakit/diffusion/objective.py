"""The denoising objective (DDPM noise prediction) and DreamBooth's prior preservation, as
pure functions over a model call and a diffusers noise scheduler.

    t ~ U{0..T-1},  eps ~ N(0, I),  x_t = scheduler.add_noise(x0, eps, t)
    target = eps (prediction_type "epsilon") | scheduler.get_velocity(x0, eps, t) ("v_prediction")
             | x0 ("sample")
    loss_b = mean over pixels of (model(x_t, t) - target)^2            per sample, [B]

DreamBooth with prior preservation trains on instance and class images in one batch (as many
of each):
``loss = mean(loss[instance]) + prior_weight * mean(loss[class])`` (diffusers'
train_dreambooth_lora.py).
"""

from __future__ import annotations

from typing import Callable

import torch


def denoising_losses(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler,
                     x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample noise-prediction MSE ``[B]`` for clean samples ``x0 [B, C, H, W]``;
    ``predict(x_t, t)`` is the model call (conditioning bound in)."""
    steps = scheduler.config.num_train_timesteps
    t = torch.randint(0, steps, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    elif kind == "sample":
        target = x0
    else:
        raise ValueError(f"scheduler prediction_type {kind!r} is not epsilon, v_prediction or sample")
    pred = predict(noisy, t)
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def prior_preservation_loss(losses: torch.Tensor, is_prior: torch.Tensor, prior_weight: float) -> torch.Tensor:
    """``mean(losses[~is_prior]) + prior_weight * mean(losses[is_prior])``; a part with no
    rows in the batch contributes 0."""
    instance = losses[~is_prior].mean() if (~is_prior).any() else losses.new_zeros(())
    if not is_prior.any():
        return instance
    return instance + prior_weight * losses[is_prior].mean()


__all__ = ["denoising_losses", "prior_preservation_loss"]
