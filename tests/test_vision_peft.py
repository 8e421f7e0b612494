"""Image classifiers and PEFT: adapters (with the classifier head under modules_to_save) move
both ways with the same logits; the seed's ViT-base count; transformers 4 target names and
adapter keys."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.legacy_names import LegacyNameWarning
from tests import vision_support as vs

peft = pytest.importorskip("peft", reason="PEFT parity needs peft: pip install 'lorakit[dev]'")

CASES = {
    "vit-qv": ("vit", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "vit-all-linear": ("vit", dict(r=2, target_modules="all-linear")),
    "resnet-conv": ("resnet", dict(r=2, lora_alpha=4, target_modules=["convolution"])),
}


def _run(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


def _perturb_head(model):
    torch.manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_" not in n:
                p.add_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize("case", CASES)
def test_lorakit_image_adapter_loads_in_peft(case, tmp_path):
    kind, kw = CASES[case]
    model = vs.MODELS[kind]().eval()
    lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=False, modules_to_save=["classifier"], **kw))
    _perturb_head(model)
    x = vs.pixels()
    ours = _run(model, x)
    lorakit.save_adapter(model, tmp_path / "a")
    keys = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert any(".classifier." in k for k in keys), "the trained head is saved with the adapter"
    theirs = peft.PeftModel.from_pretrained(vs.MODELS[kind]().eval(), tmp_path / "a").eval()
    torch.testing.assert_close(_run(theirs, x), ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_run(vs.MODELS[kind]().eval(), x), ours, atol=1e-3)


@pytest.mark.parametrize("case", CASES)
def test_peft_image_adapter_loads_in_lorakit(case, tmp_path):
    kind, kw = CASES[case]
    torch.manual_seed(3)
    pm = peft.get_peft_model(vs.MODELS[kind](), peft.LoraConfig(
        init_lora_weights=False, modules_to_save=["classifier"], **kw)).eval()
    _perturb_head(pm)
    x = vs.pixels()
    theirs = _run(pm, x)
    pm.save_pretrained(tmp_path / "p")
    ours = lorakit.load_adapter(vs.MODELS[kind]().eval(), tmp_path / "p")
    torch.testing.assert_close(_run(ours, x), theirs, atol=1e-5, rtol=1e-5)


def _vit_base_101():
    from transformers import ViTConfig, ViTForImageClassification

    with torch.device("meta"):  # ViTConfig() defaults are ViT-base/16 at 224; no weights needed
        return ViTForImageClassification(ViTConfig(num_labels=101))


def test_seed_vit_base_food101_count():
    """The seed: r=16 on query/value, modules_to_save=["classifier"], 101 labels."""
    seed = dict(r=16, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.1,
                bias="none", modules_to_save=["classifier"])
    model = _vit_base_101()
    with pytest.warns(LegacyNameWarning, match="'query' -> \\['q_proj'\\]"):
        lorakit.add_adapter(model, lorakit.LoraConfig(**seed))
    trainable, total = lorakit.trainable_parameters(model)
    head = 768 * 101 + 101
    assert trainable == 667_493 == 12 * 2 * 2 * 16 * 768 + head
    # The seed printed all params 86,466,149 = base (classifier included) + LoRA factors; the
    # head's trained copy (77,669) is counted on top by lorakit and by PEFT 0.21 alike.
    assert total == 86_466_149 + head
    assert f"{100 * trainable / 86_466_149:.2f}" == "0.77"
    pm = peft.get_peft_model(_vit_base_101(), peft.LoraConfig(**{**seed, "target_modules": ["q_proj", "v_proj"]}))
    assert pm.get_nb_trainable_parameters() == (trainable, total)


def _to_transformers4(key: str) -> str:
    """A transformers 5 ViT adapter key under the transformers 4 module path."""
    for new, old in (("vit.layers.", "vit.encoder.layer."), ("attention.q_proj", "attention.attention.query"),
                     ("attention.v_proj", "attention.attention.value"), ("mlp.fc1", "intermediate.dense")):
        key = key.replace(new, old)
    return key


def test_adapter_saved_under_transformers4_names_loads_with_a_notice(tmp_path):
    model = vs.vit().eval()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, init_lora_weights=False, target_modules=["q_proj", "v_proj", "fc1"],
                                                  modules_to_save=["classifier"]))
    _perturb_head(model)
    x = vs.pixels()
    ours = _run(model, x)
    lorakit.save_adapter(model, tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    tensors = load_file(str(tmp_path / "new" / "adapter_model.safetensors"))
    save_file({_to_transformers4(k): v for k, v in tensors.items()}, str(old / "adapter_model.safetensors"))
    config = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    config["target_modules"] = ["query", "value", "intermediate.dense"]
    (old / "adapter_config.json").write_text(json.dumps(config))
    assert any("attention.attention.query.lora_A" in k for k in load_file(str(old / "adapter_model.safetensors")))
    with pytest.warns(LegacyNameWarning) as caught:
        loaded = lorakit.load_adapter(vs.vit().eval(), old)
    text = " ".join(str(w.message) for w in caught)
    assert "'query' -> ['q_proj']" in text and "'intermediate.dense' -> ['mlp.fc1']" in text
    assert "tensor keys written under transformers 4 module names were renamed" in text
    torch.testing.assert_close(_run(loaded, x), ours, atol=1e-6, rtol=1e-6)
    assert lorakit.adapter_configs(loaded)["default"].target_modules == ["q_proj", "v_proj", "mlp.fc1"]


def test_current_names_load_without_a_notice(tmp_path):
    model = vs.vit()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["classifier"]))
    lorakit.save_adapter(model, tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyNameWarning)
        lorakit.load_adapter(vs.vit(), tmp_path / "a")


def test_unknown_target_still_names_close_modules():
    with pytest.raises(ValueError, match="'quer' matched no module.*q_proj"):
        lorakit.add_adapter(vs.vit(), lorakit.LoraConfig(r=2, target_modules=["quer"]))
