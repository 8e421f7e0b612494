"""Use a trained image classifier: load it with its labels, predict, evaluate.

- ``load_classifier(model, adapter)``: the base ``model`` with the adapter directory's head
  size and labels (``label_map.json``) and the adapter loaded; with ``adapter=None``, a
  fully fine-tuned run's ``model`` directory (its own ``label_map.json``).
- ``predict``: ``argmax`` label id and its softmax probability per image, plus the mean
  cross-entropy when the data has labels; no augmentation, eval mode.
- ``lorakit eval --task image_classification``: accuracy, macro-F1 and the confusion matrix
  in ``eval.json`` and a ``confusion.png`` beside it. The base model alone is not scored: its
  head is new (random) for these labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lorakit.formats import label_map
from lorakit.vision import efficientnet, models
from lorakit.vision.data import ImageData, load_images
from lorakit.vision.metrics import classification_report, plot_confusion
from lorakit.vision.transforms import Preprocess

__all__ = ["load_classifier", "predict", "run_eval"]


def load_classifier(model: str, adapter: str | None = None) -> tuple[models.ImageModel, list[str]]:
    """(classifier ready for inference, label names in id order); see the module docstring."""
    import lorakit

    info = label_map.read_labels(adapter or model)
    names = info["label_names"]
    if adapter is not None:
        im = models.load_image_model(model, names, info.get("image_size") or 0)
        lorakit.load_adapter(im.model, adapter)
    elif info.get("base_model") == efficientnet.NAME:
        from safetensors.torch import load_file

        im = models.load_image_model(efficientnet.NAME, names, info.get("image_size") or 0)
        im.model.load_state_dict(load_file(str(Path(model) / "model.safetensors")))
    else:
        im = models.load_image_model(model, names)
    im.model.eval()
    return im, names


@torch.no_grad()
def predict(model: nn.Module, preprocess: Preprocess, data: ImageData, batch_size: int = 32,
            autocast: bool = False) -> tuple[list[tuple[int, float]], float | None]:
    """``[(label id, probability)]`` per image and the mean cross-entropy (None if unlabelled)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out, loss_sum = [], 0.0
    try:
        for start in range(0, len(data), batch_size):
            index = list(range(start, min(start + batch_size, len(data))))
            x = preprocess([data.image(i) for i in index]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                scores = models.logits(model, x).float()
            probs = scores.softmax(-1)
            top = probs.max(-1)
            out += list(zip(top.indices.tolist(), top.values.tolist()))
            if data.labels:
                y = torch.tensor([data.labels[i] for i in index], device=device)
                loss_sum += float(nn.functional.cross_entropy(scores, y, reduction="sum"))
    finally:
        model.train(was_training)
    return out, (loss_sum / len(data) if data.labels else None)


def run_eval(args) -> int:
    """``lorakit eval --task image_classification --model M [--adapter DIR] --data D``."""
    im, names = load_classifier(args.model, args.adapter)
    data = load_images(args.data, label_names=names)
    if args.limit:
        data = data.subset(list(range(min(args.limit, len(data)))))
    preds, loss = predict(im.model, im.preprocess, data, args.batch_size)
    report = classification_report([p for p, _ in preds], data.labels, names)
    report["loss"] = loss
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_name(out.stem + "_confusion.png")
    plot_confusion(report["confusion"], names, png,
                   title=f"{Path(args.adapter or args.model).name}: accuracy {report['accuracy']:.3f}")
    examples = [{"image": data.where(i), "label": names[data.labels[i]], "prediction": names[p],
                 "probability": prob} for i, (p, prob) in enumerate(preds)]
    out.write_text(json.dumps({"model": args.model, "adapter": args.adapter, "data": args.data,
                               "task": "image_classification", "results": {"adapter" if args.adapter
                               else "model": report}, "examples": examples}, indent=2))
    print(f"images {report['n']}  accuracy {100 * report['accuracy']:.1f}%  macro_f1 "
          f"{100 * report['macro_f1']:.1f}%  loss {loss:.4f}")
    print(f"\nwrote {out} and {png}")
    return 0
