"""VeRA as its own adapter type: the layer contract, PEFT's projections and file layout, and
PEFT parity in both directions."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import lorakit
from lorakit.variants.vera import VeraLinear
from tests.variants_support import load_base, logits, randomize_adapter, save_tiny_llama

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _ours(base_dir, **kw):
    cfg = lorakit.VeraConfig(r=16, target_modules=TARGETS, **kw)
    return lorakit.add_adapter(load_base(base_dir), cfg)


def test_zero_init_equals_base_and_only_lambdas_train(base_dir):
    ref = logits(load_base(base_dir))
    model = _ours(base_dir)
    torch.testing.assert_close(logits(model), ref, rtol=0, atol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".vera_lambda_" in n for n in trainable)
    assert not any("vera_A" in k or "vera_B" in k for k in model.state_dict())  # not saved with the model


def test_projections_are_shared_and_match_peft(base_dir):
    ours = _ours(base_dir)
    theirs = peft.get_peft_model(load_base(base_dir), peft.VeraConfig(r=16, target_modules=TARGETS))
    q = ours.model.layers[0].self_attn.q_proj
    down = ours.model.layers[1].mlp.down_proj
    assert q.vera_projection["default"] is down.vera_projection["default"]
    proj = q.vera_projection["default"]
    assert proj.vera_A.shape == (16, 96) and proj.vera_B.shape == (96, 16)  # max in / max out
    torch.testing.assert_close(proj.vera_A, theirs.base_model.vera_A["default"], rtol=0, atol=0)
    torch.testing.assert_close(proj.vera_B, theirs.base_model.vera_B["default"], rtol=0, atol=0)


def test_merge_unmerge_contract(base_dir):
    model = _ours(base_dir, init_weights=False)
    q = model.model.layers[0].self_attn.q_proj
    w0 = q.base_layer.weight.detach().clone()
    unmerged = logits(model)
    assert not torch.allclose(unmerged, logits(load_base(base_dir)), atol=1e-3)
    lorakit.merge(model)
    torch.testing.assert_close(logits(model), unmerged, **TOL)
    lorakit.merge(model)
    lorakit.unmerge(model)
    torch.testing.assert_close(q.base_layer.weight, w0, rtol=0, atol=1e-6)
    with lorakit.disabled(model):
        torch.testing.assert_close(logits(model), logits(load_base(base_dir)), **TOL)


def test_conv1d_base_merges_in_its_layout():
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(12, 10), nn.ReLU(), Conv1D(7, 12))
    lorakit.add_adapter(model, lorakit.VeraConfig(r=4, target_modules=["0", "2"], init_weights=False))
    assert isinstance(model[0], VeraLinear) and model[0].fan_in_fan_out
    x = torch.randn(3, 10)
    with torch.no_grad():
        want = model(x)
        lorakit.merge(model)
        torch.testing.assert_close(model(x), want, **TOL)


@pytest.mark.parametrize("save_projection", [True, False])
def test_round_trip_and_peft_loads_ours(base_dir, tmp_path, save_projection):
    model = _ours(base_dir, save_projection=save_projection)
    randomize_adapter(model, scale=0.5)
    want = logits(model)
    lorakit.save_adapter(model, tmp_path / "v")
    keys = json.loads((tmp_path / "v" / "adapter_config.json").read_text())
    assert keys["peft_type"] == "VERA" and keys["r"] == 16
    if save_projection:
        ours = lorakit.load_adapter(load_base(base_dir), tmp_path / "v")
    else:
        with pytest.warns(UserWarning, match="projections rebuilt from projection_prng_key"):
            ours = lorakit.load_adapter(load_base(base_dir), tmp_path / "v")
    torch.testing.assert_close(logits(ours), want, rtol=0, atol=0)
    theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "v").eval()
    torch.testing.assert_close(logits(theirs), want, **TOL)


def test_we_load_peft_vera(base_dir, tmp_path):
    theirs = peft.get_peft_model(load_base(base_dir), peft.VeraConfig(r=16, target_modules=TARGETS,
                                                                     projection_prng_key=7, vera_dropout=0.1))
    randomize_adapter(theirs, scale=0.5)
    theirs.eval()
    want = logits(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    ours = lorakit.load_adapter(load_base(base_dir), tmp_path / "peft")
    assert isinstance(lorakit.adapter_configs(ours)["default"], lorakit.VeraConfig)
    torch.testing.assert_close(logits(ours), want, **TOL)


def test_one_adapter_type_per_model(base_dir):
    model = _ours(base_dir)
    with pytest.raises(ValueError, match="holds \\['VERA'\\] adapters; a LORA adapter cannot be added"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"]), "lora")
    with pytest.raises(ValueError, match="cannot run in a mixed batch"):
        with lorakit.adapter_per_row(model, ["default"]):
            pass
    with pytest.raises(ValueError, match="bias must be 'none' or 'all'"):
        lorakit.VeraConfig(bias="vera_only")
