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
"""

from lorakit.vision.data import ImageData, load_images
from lorakit.vision.evaluate import load_classifier, predict
from lorakit.vision.models import ImageModel, load_image_model, logits

__all__ = ["ImageData", "ImageModel", "load_images", "load_image_model", "load_classifier",
           "logits", "predict"]
