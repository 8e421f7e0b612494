"""``label_map.json``: the class names of an image classifier, beside its adapter or model.

    {"id2label": {"0": "cat", "1": "dog"}, "label2id": {"cat": 0, "dog": 1},
     "base_model": "<the model trained on>", "image_size": 0}

``id2label`` keys are class ids as strings (as in a Hugging Face ``config.json``);
``image_size`` is the input side of ``efficientnet-lite0`` (0: its default). Written by
``lorakit train --task image_classification``; read by ``lorakit eval`` / ``predict`` and
``lorakit.vision.load_classifier``. PEFT ignores the file.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["LABELS_FILE", "save_labels", "read_labels"]

LABELS_FILE = "label_map.json"


def save_labels(directory: str | Path, label_names: list[str], model: str, image_size: int = 0) -> None:
    """``label_map.json`` beside an adapter: id2label, label2id, the base model, image size."""
    info = {"id2label": {str(i): n for i, n in enumerate(label_names)},
            "label2id": {n: i for i, n in enumerate(label_names)},
            "base_model": model, "image_size": image_size}
    Path(directory, LABELS_FILE).write_text(json.dumps(info, indent=2))


def read_labels(directory: str | Path) -> dict:
    """``label_map.json`` as written by ``save_labels`` (``label_names`` added, in id order);
    a missing file or a gap in the ids is an error naming the file."""
    path = Path(directory, LABELS_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: an image adapter directory written by "
                                "`lorakit train --task image_classification` holds its label map")
    try:
        info = json.loads(path.read_text())
        id2label = info["id2label"]
        info["label_names"] = [id2label[str(i)] for i in range(len(id2label))]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a label map with id2label 0..n-1 ({err!r})") from None
    return info
