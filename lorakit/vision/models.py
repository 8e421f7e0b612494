"""Image classifiers: Hugging Face ``*ForImageClassification`` models and the embedded
EfficientNet-Lite0, each with its preprocessing and the name of its classification head.

- a Hugging Face directory or hub id whose config is an image-classification architecture
  (ViT, DeiT, ConvNeXt, ResNet, Swin, ...): ``AutoModelForImageClassification`` with a new head
  of ``num_labels`` (``id2label`` / ``label2id`` set in its config) and the model's own
  ``AutoImageProcessor`` (PIL backend: torchvision is not needed);
- ``efficientnet-lite0``: the embedded ImageNet model (``lorakit.vision.efficientnet``),
  normalised with the ImageNet mean/std at ``image_size`` (default 224).

``logits(model, pixel_values)`` runs either kind: ``[B, 3, H, W] -> [B, num_labels]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lorakit.vision import efficientnet
from lorakit.vision.checks import hf_config, is_image_classifier
from lorakit.vision.transforms import HFPreprocess, NormalizePreprocess, Preprocess

__all__ = ["ImageModel", "load_image_model", "logits"]

HEADS = ("classifier", "head", "fc", "_fc")  # classification heads, trained in full


@dataclass
class ImageModel:
    model: nn.Module
    preprocess: Preprocess
    head: str              # module name of the classification head (modules_to_save)


def logits(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Class scores ``[B, num_labels]`` of a Hugging Face or plain PyTorch classifier."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return model(pixel_values=pixel_values).logits
    return model(pixel_values)


def _head_name(model: nn.Module) -> str:
    head = next((h for h in HEADS if isinstance(getattr(model, h, None), nn.Module)), None)
    if head is None:
        raise ValueError(f"{type(model).__name__}: no classification head named one of {list(HEADS)}")
    return head


def load_image_model(name: str, label_names: list[str], image_size: int = 0,
                     dtype: torch.dtype = torch.float32) -> ImageModel:
    """The classifier ``name`` with a head for ``label_names`` (see the module docstring).
    ``image_size`` > 0 overrides the input side of ``efficientnet-lite0``."""
    n = len(label_names)
    if n < 2:
        raise ValueError(f"image classification needs at least 2 labels, got {label_names}")
    if name == efficientnet.NAME:
        size = image_size or 224
        model = efficientnet.load_efficientnet_lite0(n, size).to(dtype)
        return ImageModel(model, NormalizePreprocess(size), efficientnet.HEAD)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from lorakit.models import resolve_model_path

    config = hf_config(name)
    if not is_image_classifier(config):
        raise ValueError(f"{name}: a {type(config).__name__} ({config.model_type}) is not an image "
                         "classifier; task image_classification needs ViT, DeiT, ConvNeXt, ResNet, "
                         f"... or {efficientnet.NAME} (text models: task seq_cls or causal_lm)")
    path = resolve_model_path(name)
    if image_size:
        raise ValueError(f"{name}: image_size applies to {efficientnet.NAME} only; a Hugging Face "
                         "model takes its size from its image processor")
    id2label = dict(enumerate(label_names))
    model = AutoModelForImageClassification.from_pretrained(
        path, dtype=dtype, num_labels=n, id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True)
    try:
        processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    except OSError as err:
        raise ValueError(f"{name}: no image processor (preprocessor_config.json) ({err})") from None
    return ImageModel(model, HFPreprocess(processor), _head_name(model))
