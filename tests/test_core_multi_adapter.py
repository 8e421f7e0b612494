"""Several adapters on one model: a module inside an adapted layer is never a target.

A second adapter whose targets overlap the first (``"all-linear"``, a regex, the README's
quick-start pattern of loading a second all-linear adapter) is added to the existing LoRA
layer, as PEFT does, never injected into its ``base_layer``; its file holds PEFT keys only.
"""

from __future__ import annotations

import pytest
import torch

import lorakit
from lorakit.layers import LoraLayer, ModulesToSave
from tests import tiny

peft = pytest.importorskip("peft")

SECOND = {"all-linear": "all-linear", "regex": r".*q_proj.*"}


def _nested(model) -> list[str]:
    """Names of adapter wrappers that sit inside another adapter wrapper."""
    wrappers = [n for n, m in model.named_modules() if isinstance(m, (LoraLayer, ModulesToSave))]
    return [n for n in wrappers if any(n.startswith(w + ".") for w in wrappers)]


def _alone(target, tmp_path, kind="llama"):
    """Adapter ``b`` with ``target`` added to a fresh model alone (the reference), saved."""
    model = tiny.make(kind)
    torch.manual_seed(11)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=target, init_lora_weights=False), name="b")
    lorakit.save_adapter(model, tmp_path / "alone", name="b")
    return model


@pytest.mark.parametrize("second", SECOND)
def test_second_adapter_joins_existing_lora_layer(second, tmp_path):
    model = tiny.make("llama")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False), name="a")
    torch.manual_seed(11)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=SECOND[second], init_lora_weights=False),
                        name="b")
    assert _nested(model) == []
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoraLayer) and q.adapter_names == ["a", "b"]
    assert type(q.base_layer) is torch.nn.Linear

    alone = _alone(SECOND[second], tmp_path)
    assert set(lorakit.adapter_state_dict(model, "b")) == set(lorakit.adapter_state_dict(alone, "b"))

    lorakit.save_adapter(model, tmp_path / "b", name="b")
    lorakit.set_adapter(model, "b")
    x = tiny.batch("llama")
    ours = tiny.run(model, x)
    theirs = peft.PeftModel.from_pretrained(tiny.make("llama"), tmp_path / "b").eval()
    torch.testing.assert_close(tiny.run(theirs, x), ours, atol=1e-5, rtol=1e-5)
    lorakit.set_adapter(model, ["a", "b"])  # both summed: differs from b alone
    assert not torch.allclose(tiny.run(model, x), ours)


def test_load_second_all_linear_adapter(tmp_path):
    """The README's quick start: an all-linear adapter, then load_adapter of another one."""
    alone = _alone("all-linear", tmp_path)
    x = tiny.batch("llama")
    expected = tiny.run(alone, x)

    model = tiny.make("llama")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    lorakit.load_adapter(model, tmp_path / "alone", name="other")
    assert _nested(model) == []
    lorakit.set_adapter(model, "other")
    torch.testing.assert_close(tiny.run(model, x), expected, atol=1e-6, rtol=1e-6)
    lorakit.save_adapter(model, tmp_path / "again", name="other")
    theirs = peft.PeftModel.from_pretrained(tiny.make("llama"), tmp_path / "again").eval()
    torch.testing.assert_close(tiny.run(theirs, x), expected, atol=1e-5, rtol=1e-5)


def test_all_linear_skips_modules_to_save_copies():
    model = tiny.make("bert")
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["query"], modules_to_save=["classifier"]), name="a")
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules="all-linear"), name="b")
    assert _nested(model) == []
    assert isinstance(model.classifier, ModulesToSave)


def test_base_layer_is_never_a_target():
    model = tiny.make("llama")
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"]), name="a")
    with pytest.raises(ValueError, match="'base_layer' matched no module"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["base_layer"]), name="b")
    with pytest.raises(ValueError, match="matched no module"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=r".*\.base_layer"), name="b")
    assert _nested(model) == [] and list(lorakit.adapter_configs(model)) == ["a"]



def test_base_rows_stay_base_when_a_neighbour_adapter_overflows():
    """In a mixed batch the base rows (None) get exactly the base layer's output even when the
    other rows' adapter overflows to inf in bf16 (a scale-0 product with inf would be NaN)."""
    model = tiny.make("llama").to(torch.bfloat16)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
                        name="hot", adapter_dtype=torch.bfloat16)
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    with torch.no_grad():
        layer.lora_A["hot"].weight.fill_(1e30)
        layer.lora_B["hot"].weight.fill_(1e30)
        x = torch.ones(2, 3, layer.base_layer.in_features, dtype=torch.bfloat16)
        with lorakit.adapter_per_row(model, [None, "hot"]):
            mixed = layer(x)
        base = layer.base_layer(x)
    assert not torch.isfinite(mixed[1]).all()  # the adapter row really overflows
    assert torch.equal(mixed[0], base[0])
