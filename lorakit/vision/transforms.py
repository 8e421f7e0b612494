"""Images -> pixel tensors: the model's own preprocessing, and train-time augmentation.

Augmentation (``augment``) is torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``
re-implemented over PIL with a torch ``Generator`` (torchvision does not load here): a box of
``scale`` in ``[min_scale, 1]`` of the area and aspect ratio in ``[3/4, 4/3]`` (log-uniform) is
drawn up to 10 times; if none fits, the largest centred box with a ratio in range is taken.
The box is resized to ``size x size`` (bilinear), then flipped left-right with p = 0.5.

Preprocessing turns a list of RGB PIL images into ``pixel_values [B, 3, H, W]`` float32:

- ``HFPreprocess``: a transformers image processor (``AutoImageProcessor``, PIL backend:
  resize / crop / rescale / normalize exactly as the model was trained);
- ``NormalizePreprocess``: resize to ``size x size`` (bilinear), scale to [0, 1], subtract
  ``mean``, divide by ``std`` per channel (plain PyTorch classifiers, e.g. EfficientNet-Lite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

__all__ = ["Preprocess", "HFPreprocess", "NormalizePreprocess", "crop_box", "augment"]

RATIO = (3 / 4, 4 / 3)
AUGMENTS = ("crop-flip", "crop", "none")


class Preprocess(Protocol):
    size: int  # side of the square the model sees; augmentation crops to it

    def __call__(self, images: list[Image.Image]) -> torch.Tensor: ...


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def crop_box(width: int, height: int, min_scale: float, g: torch.Generator) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a random resized crop (see the module docstring)."""
    area = width * height
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for _ in range(10):
        target = area * _uniform(min_scale, 1.0, g)
        ratio = math.exp(_uniform(log_lo, log_hi, g))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=g))
            left = int(torch.randint(0, width - w + 1, (), generator=g))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        w, h = round(height * RATIO[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def augment(image: Image.Image, size: int, kind: str, min_scale: float,
            g: torch.Generator) -> Image.Image:
    """``kind``: ``crop-flip``, ``crop`` (random resized crop only) or ``none`` (unchanged)."""
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augmentation {kind!r}; known: {list(AUGMENTS)}")
    if kind == "none":
        return image
    left, top, w, h = crop_box(image.width, image.height, min_scale, g)
    image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if kind == "crop-flip" and float(torch.rand((), generator=g)) < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


class HFPreprocess:
    """A transformers image processor as a ``Preprocess``."""

    def __init__(self, processor):
        self.processor = processor
        self.size = _processor_side(processor)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"].float()


def _processor_side(processor) -> int:
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    size = dict(size) if not isinstance(size, int) else {"height": size}
    for key in ("height", "shortest_edge", "width"):
        if size.get(key):
            return int(size[key])
    raise ValueError(f"{type(processor).__name__}: cannot tell the input size from {size}")


@dataclass
class NormalizePreprocess:
    size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        arrays = [np.asarray(im.resize((self.size, self.size), Image.BILINEAR), dtype=np.float32)
                  for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std
