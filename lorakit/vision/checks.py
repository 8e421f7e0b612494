"""Inputs that do not fit the task: image data or an image model given to a text task.

(The other direction, text data or a text model given to ``image_classification``, is caught
where the images and the model load: ``data.load_images`` and ``models.load_image_model``.)
"""

from __future__ import annotations

from lorakit.vision.data import image_data_reason
from lorakit.vision.models import image_model_reason

__all__ = ["image_input_reason"]


def image_input_reason(model: str, data_paths: list[str]) -> str | None:
    """Why a text task cannot use ``model`` / ``data_paths`` (they are image ones), or None."""
    for path in data_paths:
        reason = path and image_data_reason(path)
        if reason:
            return reason
    return image_model_reason(model)
