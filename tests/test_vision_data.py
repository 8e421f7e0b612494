"""Image data (folders, tables, datasets dirs), bad input, augmentation, preprocessing, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.train import build
from lorakit.train.config import TrainConfig
from lorakit.vision import load_image_model, load_images
from lorakit.vision.metrics import classification_report, confusion_matrix
from lorakit.vision.transforms import HFPreprocess, NormalizePreprocess, augment, crop_box
from tests import vision_support as vs


def test_image_folder_labels_in_sorted_order(tmp_path):
    vs.image_folder(tmp_path / "d", per_label=3, labels=("b_cat", "a_dog"))
    data = load_images(tmp_path / "d")
    assert data.fmt == "image_folder" and data.label_names == ["a_dog", "b_cat"]
    assert data.labels == [0, 0, 0, 1, 1, 1] and len(data) == 6
    assert data.image(0).mode == "RGB"


def test_csv_and_jsonl_tables_with_relative_paths(tmp_path):
    vs.image_folder(tmp_path / "imgs", per_label=2)
    (tmp_path / "t.csv").write_text("path,label\nimgs/dark/0.png,dark\nimgs/light/1.png,light\n")
    (tmp_path / "t.jsonl").write_text(json.dumps({"image": "imgs/light/0.png", "label": 1}) + "\n"
                                      + json.dumps({"image": str(tmp_path / "imgs/dark/1.png"), "label": 0}) + "\n")
    csv = load_images(tmp_path / "t.csv")
    assert csv.label_names == ["dark", "light"] and csv.labels == [0, 1]
    jsonl = load_images(tmp_path / "t.jsonl")
    assert jsonl.labels == [1, 0] and jsonl.label_names == ["0", "1"]


def test_datasets_dir_with_image_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200, 30)]
    ds = datasets.Dataset.from_dict({"img": images, "label": [0, 1, 0]},
                                    features=datasets.Features({"img": datasets.Image(),
                                                                "label": datasets.ClassLabel(names=["low", "high"])}))
    ds.save_to_disk(str(tmp_path / "ds"))
    data = load_images(tmp_path / "ds")
    assert data.fmt == "image_datasets" and data.label_names == ["low", "high"]
    assert data.labels == [0, 1, 0] and data.image(1).getpixel((0, 0)) == (200, 200, 200)


def test_unreadable_image_is_named(tmp_path):
    vs.image_folder(tmp_path / "d", per_label=2)
    (tmp_path / "d" / "dark" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"d/dark/broken\.png: not a readable image"):
        load_images(tmp_path / "d")


def test_non_image_file_in_a_label_folder_is_named(tmp_path):
    vs.image_folder(tmp_path / "d", per_label=2)
    (tmp_path / "d" / "light" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"light/notes\.txt: not a readable image"):
        load_images(tmp_path / "d")


def test_label_folder_without_images(tmp_path):
    vs.image_folder(tmp_path / "d", per_label=2)
    (tmp_path / "d" / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"d/zebra: label folder 'zebra' has no images"):
        load_images(tmp_path / "d")


def test_table_row_with_a_missing_image_names_file_and_line(tmp_path):
    vs.image_folder(tmp_path / "imgs", per_label=1)
    (tmp_path / "t.csv").write_text("path,label\nimgs/dark/0.png,dark\nimgs/dark/nope.png,dark\n")
    with pytest.raises(ValueError, match=r"t\.csv:3: image not found: .*nope\.png"):
        load_images(tmp_path / "t.csv")


def test_text_data_given_to_an_image_task(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "great film", "label": "pos"}) + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl:1: .*looks like text data \(a 'text' column\)"):
        load_images(tmp_path / "t.jsonl")


def test_image_data_given_to_a_text_task(tmp_path):
    vs.image_folder(tmp_path / "d", per_label=1)
    cfg = TrainConfig(task="seq_cls", data=str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"is an image folder .*task 'seq_cls' trains a text model"):
        build.check_inputs(cfg)
    (tmp_path / "t.csv").write_text(f"path,label\n{tmp_path}/d/dark/0.png,dark\n")
    with pytest.raises(ValueError, match=r"t\.csv:2: rows name image files"):
        build.check_inputs(TrainConfig(task="causal_lm", data=str(tmp_path / "t.csv")))


def test_image_folder_given_to_text_eval(tmp_path, capsys):
    from lorakit.cli import main

    vs.image_folder(tmp_path / "d", per_label=1)
    assert main(["eval", "--task", "seq_cls", "--data", str(tmp_path / "d")]) == 2
    assert "is an image folder" in capsys.readouterr().err


def test_image_model_given_to_a_text_task(tmp_path):
    vs.save_model("vit", tmp_path / "vit")
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "x", "label": 0}) + "\n")
    cfg = TrainConfig(task="seq_cls", model=str(tmp_path / "vit"), data=str(tmp_path / "t.jsonl"))
    with pytest.raises(ValueError, match=r"vit is an image model \(ViTConfig\)"):
        build.check_inputs(cfg)


def test_text_model_given_to_an_image_task(tmp_path):
    from tests import tiny

    tiny.llama().save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match=r"a LlamaConfig \(llama\) is not an image classifier"):
        load_image_model(str(tmp_path / "llama"), ["a", "b"])


def test_crop_boxes_stay_inside_with_area_and_ratio_in_range():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        left, top, w, h = crop_box(40, 30, 0.25, g)
        assert 0 <= left and left + w <= 40 and 0 <= top and top + h <= 30
        ok_area = 0.25 * 1200 * 0.85 <= w * h <= 1200
        ok_ratio = 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
        fallback = (w, h) == (40, 30) or (left, top, w, h) == (0, 0, 40, 30)
        assert (ok_area and ok_ratio) or fallback


def test_augment_is_seeded_sized_and_flips_about_half():
    image = Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3))
    runs = [[np.asarray(augment(image, 16, "crop-flip", 0.5, torch.Generator().manual_seed(s))) for s in range(40)]
            for _ in range(2)]
    assert all((a == b).all() for a, b in zip(*runs)) and runs[0][0].shape == (16, 16, 3)
    flips = 0
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        out = np.asarray(augment(image, 30, "crop-flip", 1.0, g)).astype(int)  # full-area crops
        flips += out[:, 0].sum() > out[:, -1].sum()  # the image brightens to the right
    assert 70 < flips < 130
    assert augment(image, 16, "none", 0.5, g) is image


def test_normalize_preprocess_matches_the_formula():
    image = Image.fromarray(np.full((5, 7, 3), 128, np.uint8))
    x = NormalizePreprocess(4)([image, image])
    assert x.shape == (2, 3, 4, 4)
    torch.testing.assert_close(x[0, 1], torch.full((4, 4), (128 / 255 - 0.456) / 0.224))


def test_hf_preprocess_is_the_models_processor(tmp_path):
    from transformers import AutoImageProcessor

    vs.save_model("vit", tmp_path / "vit")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "vit", backend="pil")
    pre = HFPreprocess(processor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    assert pre.size == vs.SIDE
    torch.testing.assert_close(pre([image]), processor(images=[image], return_tensors="pt")["pixel_values"])


def test_confusion_matrix_rows_are_truth():
    assert confusion_matrix([0, 1, 1, 2], [0, 0, 1, 2], 3) == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    report = classification_report([0, 1, 1, 2], [0, 0, 1, 2], ["a", "b", "c"])
    assert report["accuracy"] == 0.75
    assert report["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
