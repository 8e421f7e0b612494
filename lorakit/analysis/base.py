"""Base weights of adapted modules, oriented like the adapter's ``dW`` (``[out, in]``)."""

from __future__ import annotations

import torch
from torch import nn

from lorakit.errors import NotFoundError


def oriented_weight(module: nn.Module, name: str = "") -> torch.Tensor:
    """A module's weight as a map from inputs to outputs, ``[out, in]`` (detached, float64).

    ``nn.Linear`` is already ``[out, in]``; GPT-2 ``Conv1D`` and ``nn.Embedding`` store the
    transpose; conv weights ``[out, in, *kernel]`` flatten to ``[out, in * kernel]``.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"module {name!r} ({type(module).__name__}) has no weight tensor")
    w = weight.detach().double()
    if isinstance(module, nn.Embedding) or type(module).__name__ == "Conv1D":
        return w.T
    return w.reshape(w.shape[0], -1)


def base_weights(model: nn.Module, modules: list[str]) -> dict[str, torch.Tensor]:
    """``module path -> oriented_weight`` for each path (the paths an adapter file names)."""
    out = {}
    for name in modules:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise NotFoundError(f"the base model has no module {name!r} (adapter for another model?)") from None
        out[name] = oriented_weight(module, name)
    return out
