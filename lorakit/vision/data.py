"""Image classification data: an image folder, a path/label table, or a saved ``datasets`` dir.

Layouts (``load_images(path)``):

- image folder: ``root/<label>/<image>``; the label is the folder name. Hidden files are
  ignored; any other file must be an image.
- a table (``.csv`` with a header, ``.jsonl``, ``.json``, ``.parquet``) with a path column
  (``path``, ``image``, ``file`` or ``filename``) and a ``label`` column; relative paths are
  relative to the table's directory.
- a directory written by ``datasets``' ``save_to_disk`` with an ``Image`` column and a label
  column (``label`` / ``labels``, or the one ``ClassLabel`` column); a ``DatasetDict`` uses its
  ``train`` split.

Every image is opened and verified before training starts, so an unreadable file, a label
folder without images or a text table stops the run with an error naming the path (or
``file:line``). Labels: folder names and string labels get ids in sorted order (or the order
of ``label_names``); integer labels are ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from lorakit.vision.checks import PATH_COLUMNS, TEXT_COLUMNS, is_datasets_dir

__all__ = ["ImageData", "load_images", "split_images", "open_image"]



@dataclass
class ImageData:
    """``sources[i]`` is a file path (folder / table) or a row index into ``dataset``;
    ``labels[i]`` its class id; ``label_names[id]`` the class name."""

    sources: list
    labels: list[int]
    label_names: list[str]
    fmt: str                       # "image_folder" | "image_table" | "image_datasets"
    source: str
    dataset: object = None         # datasets.Dataset for fmt "image_datasets"
    image_column: str = ""

    def __len__(self) -> int:
        return len(self.sources)

    def where(self, i: int) -> str:
        return str(self.sources[i]) if self.dataset is None else f"{self.source} row {self.sources[i]}"

    def image(self, i: int) -> Image.Image:
        """Example ``i`` as an RGB image (an unreadable file raises naming its path)."""
        if self.dataset is None:
            return open_image(self.sources[i])
        value = self.dataset[int(self.sources[i])][self.image_column]
        if not isinstance(value, Image.Image):
            raise ValueError(f"{self.where(i)}: column {self.image_column!r} is not an image")
        return value.convert("RGB")

    def subset(self, index: list[int], suffix: str = "") -> "ImageData":
        return ImageData([self.sources[i] for i in index], [self.labels[i] for i in index],
                         self.label_names, self.fmt, self.source + suffix, self.dataset,
                         self.image_column)


def open_image(path) -> Image.Image:
    """Decode ``path`` as RGB; a missing or non-image file raises ``ValueError`` naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def _verify(path: Path) -> None:
    try:
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def load_images(path: str | Path, label_names: list[str] | None = None) -> ImageData:
    """Read ``path`` (see the module docstring); ``label_names`` fixes the class ids (pass the
    training set's names when loading its eval data)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    if path.is_dir() and is_datasets_dir(path):
        return _from_datasets(path, label_names)
    if path.is_dir():
        return _from_folder(path, label_names)
    return _from_table(path, label_names)


def _from_folder(root: Path, label_names: list[str] | None) -> ImageData:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no label folders; an image folder is root/<label>/<image> "
                         f"(found {len(stray)} files directly in {root})")
    if stray:
        raise ValueError(f"{stray[0]}: a file directly in the image-folder root {root}; images go "
                         "in root/<label>/<image>")
    names = label_names or [p.name for p in folders]
    index = {name: i for i, name in enumerate(names)}
    sources, labels = [], []
    for folder in folders:
        if folder.name not in index:
            raise ValueError(f"{folder}: label {folder.name!r} is not among the training labels {names}")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{folder}: label folder {folder.name!r} has no images")
        for file in files:
            _verify(file)
            sources.append(file)
            labels.append(index[folder.name])
    return ImageData(sources, labels, names, "image_folder", str(root))


def _label_ids(values: list, wheres: list[str], names: list[str] | None) -> tuple[list[int], list[str]]:
    kinds = {type(v) for v in values}
    if kinds == {int}:
        for v, where in zip(values, wheres):
            if v < 0:
                raise ValueError(f"{where}: label {v} is negative")
        return values, names or [str(i) for i in range(max(values) + 1)]
    if kinds != {str}:
        bad = next(w for v, w in zip(values, wheres) if not isinstance(v, (int, str)) or
                   type(v) is not type(values[0]))
        raise ValueError(f"{bad}: labels must be all strings or all integers")
    names = names or sorted(set(values))
    index = {name: i for i, name in enumerate(names)}
    for v, where in zip(values, wheres):
        if v not in index:
            raise ValueError(f"{where}: label {v!r} is not among the training labels {names}")
    return [index[v] for v in values], names


def _from_table(file: Path, label_names: list[str] | None) -> ImageData:
    from lorakit.train.readers import read_rows

    rows = read_rows(file)
    keys = set(rows[0].record)
    column = next((c for c in PATH_COLUMNS if c in keys), None)
    if column is None or "label" not in keys:
        text = next((c for c in TEXT_COLUMNS if c in keys), None)
        hint = (f"it looks like text data (a {text!r} column): train a text model on it "
                "(task seq_cls or causal_lm), not an image model") if text else \
            f"image data needs a path column ({' / '.join(PATH_COLUMNS)}) and a label column"
        raise ValueError(f"{rows[0].where}: keys {sorted(keys)}; {hint}")
    sources, values, wheres = [], [], []
    for row in rows:
        for key in (column, "label"):
            if row.record.get(key) in (None, ""):
                raise ValueError(f"{row.where}: missing {key!r}")
        image = Path(str(row.record[column]))
        image = image if image.is_absolute() else file.parent / image
        try:
            _verify(image)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"{row.where}: {err}") from None
        sources.append(image)
        values.append(row.record["label"])
        wheres.append(row.where)
    labels, names = _label_ids(values, wheres, label_names)
    return ImageData(sources, labels, names, "image_table", str(file))


def _from_datasets(path: Path, label_names: list[str] | None) -> ImageData:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(f"{path}: a DatasetDict without a 'train' split ({list(ds)})")
        ds = ds["train"]
    features = ds.features
    image = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    if image is None:
        raise ValueError(f"{path}: no Image column (columns {list(features)}); "
                         "an image model needs images, a text model reads this directory")
    classes = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    label = next((k for k in ("label", "labels") if k in features), classes[0] if classes else None)
    if label is None:
        raise ValueError(f"{path}: no label column (label / labels or a ClassLabel) in {list(features)}")
    values = list(ds[label])
    if isinstance(features[label], datasets.ClassLabel) and label_names is None:
        label_names = list(features[label].names)
    wheres = [f"{path} row {i}" for i in range(len(values))]
    labels, names = _label_ids(values, wheres, label_names)
    data = ImageData(list(range(len(values))), labels, names, "image_datasets", str(path), ds, image)
    for i in range(len(data)):
        data.image(i)  # decodes: a broken image stops here, named by row
    return data


def split_images(data: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Hold out ``round(fraction * n)`` examples (at least 1), chosen by ``seed``."""
    n = len(data)
    n_eval = max(1, round(fraction * n))
    if n_eval >= n:
        raise ValueError(f"{data.source}: eval_split={fraction} leaves no training examples (n={n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_eval])
    return (data.subset([i for i in range(n) if i not in held]),
            data.subset([i for i in range(n) if i in held], " (eval split)"))
