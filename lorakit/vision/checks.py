"""Inputs that do not fit the task: image data or an image model given to a text task.

Text tasks call ``image_input_reason`` before anything loads; this module imports neither
PIL nor the image code, so text training does not need the ``vision`` extra. (The other
direction, text data or a text model given to ``image_classification``, is caught where the
images and the model load: ``data.load_images`` and ``models.load_image_model``.)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["image_input_reason", "IMAGE_SUFFIXES", "PATH_COLUMNS", "TEXT_COLUMNS"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
PATH_COLUMNS = ("path", "image", "file", "filename")
TEXT_COLUMNS = ("text", "sentence", "prompt", "instruction", "messages", "input")
EMBEDDED_IMAGE_MODELS = ("efficientnet-lite0",)


def is_datasets_dir(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def hf_config(name: str):
    from transformers import AutoConfig

    from lorakit.models import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(name))


def is_image_classifier(config) -> bool:
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    return type(config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING


def image_model_reason(name: str) -> str | None:
    """Why ``name`` is an image model (a text task cannot train it), or None."""
    if name in EMBEDDED_IMAGE_MODELS:
        return f"{name} is an image classifier"
    path = Path(name)
    if path.is_dir() and (path / "config.json").exists():
        config = hf_config(name)
        if is_image_classifier(config) and not (path / "tokenizer_config.json").exists():
            return f"{name} is an image model ({type(config).__name__})"
    return None


def _table_reason(path: Path) -> str | None:
    from lorakit.train.readers import read_rows

    try:
        first = read_rows(path)[0]
    except ValueError:
        return None
    keys = set(first.record)
    column = next((c for c in PATH_COLUMNS if c in keys), None)
    if column and "label" in keys and not keys & set(TEXT_COLUMNS) and \
            str(first.record[column]).lower().endswith(IMAGE_SUFFIXES):
        return f"{first.where}: rows name image files ({column!r} column)"
    return None


def image_data_reason(path: str | Path) -> str | None:
    """Why ``path`` is image data (a text task should not read it), or None if it is not."""
    path = Path(path)
    if path.is_dir() and not is_datasets_dir(path):
        for sub in sorted(path.iterdir()):
            if sub.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in sub.iterdir()):
                return f"{path} is an image folder ({sub.name}/ holds images)"
    if path.is_dir() and is_datasets_dir(path):
        import datasets

        ds = datasets.load_from_disk(str(path))
        ds = ds["train"] if isinstance(ds, datasets.DatasetDict) and "train" in ds else ds
        if hasattr(ds, "features") and any(isinstance(f, datasets.Image) for f in ds.features.values()):
            return f"{path} is a datasets directory with an Image column"
    if path.is_file() and path.suffix in (".csv", ".jsonl", ".json"):
        return _table_reason(path)
    return None


def image_input_reason(model: str, data_paths: list[str]) -> str | None:
    """Why a text task cannot use ``model`` / ``data_paths`` (they are image ones), or None."""
    for path in data_paths:
        reason = path and image_data_reason(path)
        if reason:
            return reason
    return image_model_reason(model)
