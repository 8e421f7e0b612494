"""``lorakit predict``: label images (files or folders) with a trained image classifier."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorakit.vision.checks import IMAGE_SUFFIXES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="label images with an image classifier (base + adapter, or a full model)",
        description="Predict the label of every image given (files, or folders searched "
                    "recursively for image files). Prints path, label and probability per line.")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="base model (directory, hub id or efficientnet-lite0), "
                                                  "or a full fine-tuning run's model directory")
    p.add_argument("--adapter", help="adapter directory written by lorakit train --task image_classification")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward")
    p.add_argument("--out", help="also write one JSON object per image to this .jsonl file")
    p.set_defaults(func=run)


def _image_paths(entries: list[str]) -> list[Path]:
    out = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif path.exists():
            out.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    return out


def run(args) -> int:
    from lorakit.vision.data import ImageData
    from lorakit.vision.evaluate import load_classifier, predict

    paths = _image_paths(args.images)
    data = ImageData(paths, [], [], "image_files", "command line")
    im, names = load_classifier(args.model, args.adapter)
    preds, _ = predict(im.model, im.preprocess, data, args.batch_size)
    rows = [{"image": str(p), "label": names[i], "probability": round(prob, 6)}
            for p, (i, prob) in zip(paths, preds)]
    for row in rows:
        print(f"{row['image']}\t{row['label']}\t{row['probability']:.4f}")
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0
