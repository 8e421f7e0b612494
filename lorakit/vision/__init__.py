"""Image classification with LoRA: data, preprocessing, models, training, evaluation.

    data.py          image folder / path,label table / datasets dir -> ImageData (checked)
    transforms.py    the model's preprocessing; random resized crop + flip (PIL + torch)
    models.py        Hugging Face image classifiers and the embedded EfficientNet-Lite0
    efficientnet.py  EfficientNet-Lite0 ImageNet weights (.pth read once, cached as safetensors)
    train.py         ``lorakit train --task image_classification`` and ``fit``
    metrics.py       accuracy, macro-F1, confusion matrix (+ PNG)
    evaluate.py      load a trained classifier, predict, ``lorakit eval`` for images
    checks.py        image inputs given to a text task
    digits.py        scikit-learn's digits written as an image folder (the demo's data)
    cli.py           ``lorakit predict``

Text training imports ``lorakit.vision.checks`` only; the names below load their modules on
first use (PIL and the image code are not imported by text runs).
"""

import importlib

_EXPORTS = {"ImageData": "data", "load_images": "data", "ImageModel": "models",
            "load_image_model": "models", "logits": "models", "load_classifier": "evaluate",
            "predict": "evaluate"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lorakit.vision' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lorakit.vision.{_EXPORTS[name]}"), name)
