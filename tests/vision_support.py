"""Tiny image classifiers and image folders for the vision tests (random weights, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIDE = 32


def vit(num_labels: int = 3):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        image_size=SIDE, patch_size=8, num_labels=num_labels))


def resnet(num_labels: int = 3):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        num_labels=num_labels))


MODELS = {"vit": vit, "resnet": resnet}


def pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def save_model(kind: str, directory: Path, num_labels: int = 2) -> Path:
    """A tiny classifier directory with its image processor (PIL backend), as on the hub."""
    from transformers import ConvNextImageProcessorPil, ViTImageProcessorPil

    MODELS[kind](num_labels).save_pretrained(directory)
    if kind == "vit":
        ViTImageProcessorPil(size={"height": SIDE, "width": SIDE}).save_pretrained(directory)
    else:
        ConvNextImageProcessorPil(size={"shortest_edge": SIDE}).save_pretrained(directory)
    return directory


def image_folder(root: Path, per_label: int = 8, labels=("dark", "light"), seed: int = 0) -> Path:
    """``root/<label>/<i>.png``: noisy images whose brightness tells the label."""
    rng = np.random.default_rng(seed)
    for k, label in enumerate(labels):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        level = 40 + 170 * k / max(1, len(labels) - 1)
        for i in range(per_label):
            a = np.clip(rng.normal(level, 20, (20 + i % 3, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(folder / f"{i}.png")
    return root
