"""scikit-learn's digits (1,797 8x8 grey images, 10 classes) as an image folder on disk.

``write_digits(root, size)`` writes ``root/train/<digit>/<i>.png`` and ``root/test/<digit>/
<i>.png`` as RGB PNGs upscaled to ``size x size`` (bicubic), the pixel values (0..16) scaled
to 0..255. The split is fixed: a seeded permutation (seed 0) of all 1,797 images, the first
``n_test`` for test, then up to ``n_train`` for train. Run as a module to write it:
``python -m lorakit.vision.digits data/digits --size 64``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["write_digits"]


def write_digits(root: str | Path, size: int = 64, n_train: int = 0, n_test: int = 400) -> Path:
    """Write the folders (see the module docstring); ``n_train=0`` = all the rest."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(0)).tolist()
    test, train = order[:n_test], order[n_test:]
    train = train[:n_train] if n_train else train
    root = Path(root)
    for split, index in (("train", train), ("test", test)):
        for i in index:
            folder = root / split / str(int(digits.target[i]))
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC)
            image.convert("RGB").save(folder / f"{i}.png")
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=0)
    p.add_argument("--n-test", type=int, default=400)
    args = p.parse_args(argv)
    print(write_digits(args.root, args.size, args.n_train, args.n_test))


if __name__ == "__main__":
    main()
